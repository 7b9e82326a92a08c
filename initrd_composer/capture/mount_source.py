"""Mount a machine's filesystems read-only from its disks, as its own /etc/fstab arranges them:
for `compose-initrd capture --disk IMAGE` and for the rescue image's `capture` boot mode.

The root filesystem is found by mounting each ext/xfs/btrfs filesystem of the layout in turn
until one holds etc/fstab (for btrfs, also a top-level subvolume that does: `@`, `@rootfs`).
Its fstab's other entries are mounted at their mount points, parents first, each spec
(UUID=, LABEL=, PARTUUID=, PARTLABEL=, /dev/disk/by-*, /dev/mapper/VG-LV, /dev/...) resolved
through the layout's filesystem records; swap, network, in-memory, bind and `noauto` entries
are skipped, and so is a `nofail` entry that cannot be resolved or mounted. Every mount is
read-only and does not replay a journal or log (ext3/4 `noload`, xfs `norecovery`, btrfs
`rescue=nologreplay`), so the source stays as it was, dirty journal included. The context
manager unmounts everything in reverse order, also after an error or a Ctrl-C.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.capture.errors import CaptureError
from initrd_composer.capture.layout.collect import HostPaths, collect_layout, run_tool
from initrd_composer.capture.layout.filesystems import fstab_matches, parse_fstab
from initrd_composer.capture.session import (
    IMAGE_TYPES,
    MEMORY_TYPES,
    NETWORK_TYPES,
    CaptureProgress,
    device_names,
    plan_capture,
    read_mounts,
    run_capture,
)

Runner = Callable[[list[str]], str]  # raises CaptureError when the command fails

ROOT_TYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs")
MOUNTABLE = frozenset({*ROOT_TYPES, "vfat"})
_BY = {"by-uuid": "UUID", "by-label": "LABEL", "by-partuuid": "PARTUUID", "by-partlabel": "PARTLABEL"}
_NOT_DISK = NETWORK_TYPES | MEMORY_TYPES | IMAGE_TYPES | {
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs", "tracefs",
    "efivarfs", "binfmt_misc", "autofs", "hugetlbfs", "mqueue", "fusectl", "configfs", "none",
}  # fmt: skip


def ro_options(fstype: str, extra: Sequence[str] = ()) -> str:
    """Read-only mount options that leave a dirty journal or log alone."""
    opts = ["ro"]
    if fstype in ("ext3", "ext4"):
        opts.append("noload")
    elif fstype == "xfs":
        opts += ["norecovery", "nouuid"]  # nouuid: a copy of a mounted filesystem mounts too
    elif fstype == "btrfs":
        opts.append("rescue=nologreplay")
    return ",".join([*opts, *extra])


@dataclass(frozen=True)
class SourceMount:
    device: str
    type: str
    mountpoint: str  # where the machine mounts it: "/", "/boot"
    path: Path  # where it is mounted here


@dataclass(frozen=True)
class MountedSource:
    root: Path
    mounts: tuple[SourceMount, ...]
    skipped: tuple[str, ...]  # fstab entries not mounted, with why


def _udev_unescape(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def resolve_spec(spec: str, layout: Mapping[str, Any]) -> dict[str, Any] | None:
    """The layout's filesystem an fstab spec names, or None."""
    parts = spec.split("/")
    if len(parts) == 5 and parts[:3] == ["", "dev", "disk"] and parts[3] in _BY:
        spec = f"{_BY[parts[3]]}={_udev_unescape(parts[4])}"
    key, sep, _value = spec.partition("=")
    for fs in layout["filesystems"]:
        if sep and key in _BY.values():
            if fstab_matches(spec, fs, set()):
                return dict(fs)
        elif spec in device_names(fs) or (
            spec.startswith("/dev/") and os.path.realpath(spec) == os.path.realpath(fs["device"])
        ):
            return dict(fs)
    return None


def _inside(root: Path, rel: str) -> Path:
    """`rel` under `root` with symlinks resolved as the machine would (absolute targets from
    its root, never leaving it): a mount point must not escape to the host."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        if here.is_symlink():
            hops += 1
            if hops > 40:
                raise CaptureError(f"too many symbolic links in the mount point /{rel}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return root.joinpath(*done)


class _Mounter:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.mounted: list[Path] = []

    def mount(self, device: str, fstype: str, target: Path, extra: Sequence[str] = ()) -> None:
        self.runner(["mount", "-t", fstype, "-o", ro_options(fstype, extra), device, str(target)])
        self.mounted.append(target)

    def umount(self, target: Path) -> None:
        self.mounted.remove(target)
        self.runner(["umount", str(target)])

    def umount_all(self) -> list[str]:
        failed = []
        for target in reversed(list(self.mounted)):
            try:
                self.umount(target)
            except CaptureError:
                try:  # still busy (a shell cd'ed into it): detach it now, it goes when released
                    self.runner(["umount", "-l", str(target)])
                except CaptureError as exc:
                    failed.append(exc.message)
        return failed


def _find_root(layout: Mapping[str, Any], target: Path, m: _Mounter) -> tuple[dict[str, Any], list[str]]:
    tried = []
    for fs in layout["filesystems"]:
        if fs["type"] not in ROOT_TYPES:
            continue
        try:
            m.mount(fs["device"], fs["type"], target)
        except CaptureError as exc:
            tried.append(f"{fs['device']}: {exc.message}")
            continue
        if (target / "etc" / "fstab").is_file():
            return dict(fs), []
        subvols = sorted(p.name for p in target.iterdir() if (p / "etc" / "fstab").is_file()) \
            if fs["type"] == "btrfs" else []  # fmt: skip
        m.umount(target)
        if subvols:
            m.mount(fs["device"], fs["type"], target, [f"subvol={subvols[0]}"])
            return dict(fs), [f"subvol={subvols[0]}"]
        tried.append(f"{fs['device']} ({fs['type']}): no etc/fstab")
    raise CaptureError(
        "no root filesystem found: no ext2/3/4, xfs or btrfs filesystem of the disks holds etc/fstab",
        "give every disk of the machine; tried: " + ("; ".join(tried) or "no such filesystem"),
    )


def _why_skipped(entry: Mapping[str, Any]) -> str | None:
    kind, opts, where = entry["type"], entry["options"], entry["mountpoint"]
    if kind == "swap" or where in ("none", "swap"):
        return "swap"
    if "bind" in opts or "rbind" in opts:
        return "bind mount"
    if kind in _NOT_DISK or "_netdev" in opts or kind.startswith("fuse"):
        return f"{kind}: not a disk filesystem"
    if "noauto" in opts:
        return "noauto"
    if not where.startswith("/"):
        return "not a mount point"
    return None


@contextmanager
def mount_source(
    layout: Mapping[str, Any], scratch: Path, *, runner: Runner = run_tool
) -> Iterator[MountedSource]:
    """Mount the machine whose disks the layout describes under `scratch` (an empty directory):
    its root filesystem at `scratch`, the others at the mount points its etc/fstab names."""
    m = _Mounter(runner)
    root = Path(scratch)
    try:
        root_fs, root_opts = _find_root(layout, root, m)
        mounts = [SourceMount(root_fs["device"], root_fs["type"], "/", root)]
        skipped: list[str] = []
        try:
            entries = parse_fstab((root / "etc" / "fstab").read_text(errors="replace"))
        except (OSError, RestoreSetError) as exc:
            raise CaptureError(f"cannot read the root filesystem's etc/fstab: {exc}",
                               "check the machine's /etc/fstab") from exc  # fmt: skip
        done = {"/": root_fs["device"]}
        for entry in sorted(entries, key=lambda e: e["mountpoint"].rstrip("/").count("/")):
            where = "/" + entry["mountpoint"].strip("/")
            why = _why_skipped(entry)
            if why is None and where == "/":
                continue  # the root, mounted above
            if why is None and where in done:
                why = f"{where} is already mounted"
            fs = resolve_spec(entry["spec"], layout) if why is None else None
            if why is None and (fs is None or fs["type"] not in MOUNTABLE):
                what = "on none of the disks" if fs is None else f"of type {fs['type']}"
                if "nofail" not in entry["options"]:
                    raise CaptureError(f"etc/fstab names {entry['spec']} for {where}, {what}",
                                       "give every disk of the machine (--disk)")  # fmt: skip
                why = f"nofail, {what}"
            if why is not None or fs is None:
                skipped.append(f"{entry['spec']} {entry['mountpoint']}: {why}")
                continue
            target = _inside(root, where)
            if not target.is_dir():
                raise CaptureError(f"the mount point {where} of {entry['spec']} is not a directory "
                                   "in the root filesystem", "check the machine's /etc/fstab")  # fmt: skip
            extra = [o for o in entry["options"] if o.startswith(("subvol=", "subvolid="))]
            if fs["device"] == root_fs["device"] and not extra and root_opts:
                extra = ["subvolid=5"]  # the top level, not the root's subvolume
            try:
                m.mount(fs["device"], fs["type"], target, extra)
            except CaptureError as exc:
                if "nofail" not in entry["options"]:
                    raise
                skipped.append(f"{entry['spec']} {entry['mountpoint']}: nofail, {exc.message}")
                continue
            done[where] = fs["device"]
            mounts.append(SourceMount(fs["device"], fs["type"], where, target))
        source = MountedSource(root, tuple(mounts), tuple(skipped))
    except BaseException:
        m.umount_all()
        raise
    try:
        yield source
    except BaseException:
        m.umount_all()
        raise
    failed = m.umount_all()
    if failed:
        raise CaptureError(f"cannot unmount the source: {failed[0]}", f"unmount it by hand under {root}")


@contextmanager
def attach_images(images: Sequence[Path | str], *, runner: Runner = run_tool) -> Iterator[list[str]]:
    """Attach disk image files read-only to loop devices (losetup -r) with partition nodes
    (partx -a); yields the loop devices, in order; detaches them all at the end. A block
    device given instead of a file is used as it is."""
    attached: list[str] = []
    devices: list[str] = []
    try:
        for image in images:
            path = Path(image)
            if not path.exists():
                raise CaptureError(f"no such disk image: {image}", "give a disk image file or a block device")
            if not path.is_file():
                devices.append(str(path))
                continue
            loop = runner(["losetup", "-r", "-f", "--show", str(path)]).strip()
            attached.append(loop)
            devices.append(loop)
            _add_partitions(loop, runner)
        yield devices
    finally:
        for loop in reversed(attached):
            for argv in (["partx", "-d", loop], ["losetup", "-d", loop]):
                try:
                    runner(argv)
                except CaptureError:
                    pass  # partx -d without partitions fails; a busy loop device is auto-cleared later


def _add_partitions(loop: str, runner: Runner) -> None:
    """partx -a: fails on a disk without a partition table (a whole-disk filesystem, fine)
    and when the kernel made the partitions itself (loop max_part, fine too)."""
    try:
        runner(["partx", "-a", loop])
    except CaptureError as exc:
        name = Path(loop).name
        if not any(Path("/sys/class/block", name).glob(f"{name}p*")) and "partition table" not in exc.message:
            raise


@contextmanager
def mounted_machine(
    disks: Sequence[str], scratch: Path, *, gap_dir: Path | None,
    efi_firmware: Path = Path("/sys/firmware/efi"), runner: Runner = run_tool,
) -> Iterator[tuple[dict[str, Any], MountedSource]]:
    """The machine on these disks mounted read-only under `scratch`, and its layout collected
    once everything is mounted (so it has the mount points, used bytes, etc/fstab and the
    filesystems' features; raw boot-code files into gap_dir). `efi_firmware`: where this
    machine's EFI variables are (a path that does not exist when they are not its own)."""
    found = collect_layout(disks, paths=HostPaths(efi_firmware=efi_firmware))
    with mount_source(found, scratch, runner=runner) as source:
        doc = collect_layout(disks, paths=HostPaths(source_root=source.root, efi_firmware=efi_firmware),
                             gap_dir=gap_dir)  # fmt: skip
        yield doc, source


def capture_machine(
    disks: Sequence[str], set_dir: Path, source_dir: Path, gap_dir: Path, *, log: Callable[[str], None],
    progress_factory: Callable[[int], CaptureProgress | None] = lambda _total: None,
    excludes: Sequence[str] = (), threads: int | None = None,
) -> dict[str, Any]:
    """The whole capture of an offline machine (the rescue image's `capture` mode): its disks'
    filesystems mounted read-only under `source_dir`, the set written into `set_dir`, every
    mount undone. `progress_factory(total used bytes)` gives the progress sink. Returns the
    report: files, bytes (file data read), archive_bytes, seconds, archives, refused,
    uncaptured, skipped. Raises CaptureError (RestoreSetError for a bad layout)."""
    Path(source_dir).mkdir(parents=True, exist_ok=True)
    Path(gap_dir).mkdir(parents=True, exist_ok=True)
    with mounted_machine(disks, Path(source_dir), gap_dir=Path(gap_dir)) as (doc, source):
        for note in source.skipped:
            log(f"capture: not mounted from etc/fstab: {note}")
        plan = plan_capture(doc, read_mounts(), root=source.root, output=set_dir, excludes=excludes)
        for line in plan.lines():
            log(f"capture: {line}")
        if plan.refused:
            log("capture: warning: a restore will refuse this set (" + "; ".join(plan.refused) + ")")
        if not plan.items:
            raise CaptureError("nothing to capture: no filesystem of the disks could be mounted",
                               "check the disks and the machine's etc/fstab")  # fmt: skip
        result = run_capture(plan, Path(set_dir), doc, Path(gap_dir), progress_factory(plan.total_bytes),
                             threads=threads)  # fmt: skip
    log("capture: " + result.summary(Path(set_dir)))
    return {
        "files": result.files, "bytes": result.data_bytes, "archive_bytes": result.archive_bytes,
        "seconds": round(result.seconds, 1), "archives": [a.file for a in result.manifest.archives],
        "refused": list(plan.refused), "uncaptured": [dev for dev, _kind in plan.uncaptured],
        "skipped": [f"{s.mountpoint}: {s.why}" for s in plan.skipped] + list(source.skipped),
    }
