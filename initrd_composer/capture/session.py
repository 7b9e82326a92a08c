"""A capture session: which of a machine's filesystems go into the restore set, and writing it.

`plan_capture()` is pure: from the layout (collect_layout) and the mount table
(/proc/self/mountinfo, parsed) it decides, for the tree at `root`, which mounts are
archived (local block filesystems of the layout, each device once), which are skipped and
why (pseudo, network, tmpfs, images, bind mounts, filesystems not on the captured disks),
the swap recorded but not archived, and the exclude patterns each archive gets (the user's,
rebased onto each filesystem, and the output directory when it lies inside one).
`run_capture()` writes the set. `source_disks()` finds the whole disks under the mounted
filesystems through /sys. Boot side: the rescue image's `capture` mode runs this too.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from initrd_composer.boot.restore_set.manifest import Manifest
from initrd_composer.capture.archive_children import ArchiveDone
from initrd_composer.capture.errors import CaptureError
from initrd_composer.capture.layout.collect import run_tool
from initrd_composer.capture.layout.filesystems import parse_mountinfo
from initrd_composer.capture.set_writer import SetTree, archive_file_name, write_set

LOCAL_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"})
NETWORK_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "ncpfs", "lustre", "ocfs2",
    "gfs2", "davfs", "fuse.sshfs", "fuse.glusterfs",
})
MEMORY_TYPES = frozenset({"tmpfs", "ramfs"})
IMAGE_TYPES = frozenset({"overlay", "squashfs", "iso9660", "udf", "erofs", "cramfs"})

Mount = Mapping[str, str]  # a parse_mountinfo() entry: dev, root, mountpoint, type, source
Runner = Callable[[list[str]], str]  # runs a command, raises CaptureError when it fails


def read_mounts(path: Path = Path("/proc/self/mountinfo")) -> list[dict[str, str]]:
    try:
        return parse_mountinfo(path.read_text())
    except OSError as exc:
        raise CaptureError(f"cannot read {path}: {exc.strerror}", "is /proc mounted?") from exc


def skip_reason(fstype: str) -> str:
    """Why a mount of this type is not archived."""
    if fstype in NETWORK_TYPES:
        return "network filesystem"
    if fstype in MEMORY_TYPES:
        return "in memory"
    if fstype in IMAGE_TYPES:
        return "an image or overlay, not a disk filesystem"
    if fstype.startswith("fuse"):
        return "FUSE filesystem"
    return f"{fstype} is not a disk filesystem the capture archives"


@dataclass(frozen=True)
class CaptureItem:
    """One filesystem to archive. `mountpoint` is where the machine mounts it ("/", "/boot"),
    `path` where it is mounted here; `source_root` the mounted directory of the filesystem
    ("/" unless a btrfs subvolume); `excludes` relative to the filesystem's root."""

    name: str
    device: str
    type: str
    mountpoint: str
    path: Path
    used_bytes: int | None
    excludes: tuple[str, ...] = ()
    source_root: str = "/"

    @property
    def file(self) -> str:
        return archive_file_name(self.name)


@dataclass(frozen=True)
class Skipped:
    mountpoint: str
    type: str
    source: str
    why: str


@dataclass(frozen=True)
class CapturePlan:
    root: Path
    output: Path
    disks: tuple[str, ...]
    items: tuple[CaptureItem, ...]
    swap: tuple[str, ...]  # devices recorded in the layout, not archived
    skipped: tuple[Skipped, ...]  # mounts under root that are not archived
    uncaptured: tuple[tuple[str, str], ...]  # layout filesystems (device, type) not mounted under root
    excludes: tuple[str, ...]
    refused: tuple[str, ...]  # what a restore will refuse in this layout
    output_in: str | None = None  # the archive the output directory is left out of, and how

    @property
    def total_bytes(self) -> int:
        return sum(i.used_bytes or 0 for i in self.items)

    def lines(self) -> list[str]:
        """What --dry-run prints: the disks, each filesystem and its archive, what is not."""
        out = [f"capture of {self.root} into {self.output}",
               "disks: " + (", ".join(self.disks) or "none")]  # fmt: skip
        rows = [(i.name, i.device, i.type, _where(i), _size(i.used_bytes), i.file) for i in self.items]
        out.append("filesystems:")
        out += _table(("name", "device", "type", "mount point", "used", "archive"), rows)
        out += [f"  {i.name}: excludes {', '.join(i.excludes)}" for i in self.items if i.excludes]
        out += [f"swap: {dev} (recorded in the layout, not archived)" for dev in self.swap]
        out += [f"not captured: {dev} ({kind}): not mounted under {self.root}"
                for dev, kind in self.uncaptured]  # fmt: skip
        out += [f"skipped: {s.mountpoint} ({s.type}, {s.source}): {s.why}" for s in self.skipped]
        out.append("excludes: " + (", ".join(self.excludes) or "none"))
        out.append(f"output: {self.output}" + (f" (left out of {self.output_in})" if self.output_in else ""))
        out += [f"refused by a restore: {r}" for r in self.refused]
        out.append(f"total: {_size(self.total_bytes)} used in {len(self.items)} filesystems")
        return out


def _where(item: CaptureItem) -> str:
    return item.mountpoint + ("" if item.source_root == "/" else f" [subvolume {item.source_root}]")


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    return ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            for r in [head, *rows]]  # fmt: skip


def _under(path: str, root: str) -> str | None:
    """`path` relative to `root` ("" for root itself), None when outside it."""
    if path == root:
        return ""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


def device_names(fs: Mapping[str, Any]) -> set[str]:
    """The names a mount table may give the filesystem's device (/dev/VG/LV as /dev/mapper/VG-LV)."""
    device = str(fs["device"])
    names = {device}
    parts = device.split("/")
    if len(parts) == 4 and parts[:2] == ["", "dev"] and parts[2] != "mapper":
        names.add("/dev/mapper/" + parts[2].replace("-", "--") + "-" + parts[3].replace("-", "--"))
    return names


def _layout_fs(layout: Mapping[str, Any], mount: Mount) -> dict[str, Any] | None:
    for fs in layout["filesystems"]:
        if mount["source"] in device_names(fs):
            return dict(fs)
    for fs in layout["filesystems"]:
        if fs.get("mountpoint") == mount["mountpoint"] and mount["root"] == "/":
            return dict(fs)
    return None


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def rebase_exclude(pattern: str, mount_rel: str) -> str | bool | None:
    """A user's --exclude for the filesystem mounted at `mount_rel` (relative to the machine's
    root, "" for the root filesystem): the pattern relative to that filesystem, True when it
    excludes the whole filesystem (it matches the mount point or a directory above it), None
    when it cannot match inside it. Patterns with "/" are paths from the machine's root;
    their leading segments are matched segment by segment against the mount point."""
    msegs = mount_rel.split("/") if mount_rel else []
    if "/" not in pattern:
        return True if any(fnmatch.fnmatchcase(s, pattern) for s in msegs) else pattern
    psegs = pattern.strip("/").split("/")
    if not msegs:
        return "/" + "/".join(psegs)
    head = min(len(psegs), len(msegs))
    if not all(fnmatch.fnmatchcase(m, p) for m, p in zip(msegs[:head], psegs[:head], strict=True)):
        return None
    if len(psegs) <= len(msegs):
        return True
    return "/" + "/".join(psegs[len(msegs):])


def plan_capture(
    layout: Mapping[str, Any], mounts: Sequence[Mount], *, root: Path | str, output: Path | str,
    excludes: Sequence[str] = (),
) -> CapturePlan:
    """The capture of the tree mounted at `root` (absolute, symlinks resolved) into the set
    directory `output` (absolute, resolved; it need not exist yet)."""
    root_s, output_s = os.path.normpath(root), os.path.normpath(output)
    visible: dict[str, Mount] = {}
    for m in mounts:  # a later mount on the same point hides the earlier one
        visible.pop(m["mountpoint"], None)
        visible[m["mountpoint"]] = m
    skipped: list[Skipped] = []
    by_device: dict[str, list[tuple[Mount, dict[str, Any]]]] = {}
    for m in visible.values():
        rel = _under(m["mountpoint"], root_s)
        if rel is None:
            continue
        where = "/" + rel
        fs = _layout_fs(layout, m) if m["type"] in LOCAL_TYPES else None
        if m["type"] not in LOCAL_TYPES:
            skipped.append(Skipped(where, m["type"], m["source"], skip_reason(m["type"])))
        elif fs is None:
            skipped.append(Skipped(where, m["type"], m["source"], "not on the captured disks"))
        else:
            by_device.setdefault(fs["device"], []).append((m, fs))
    chosen: list[tuple[Mount, dict[str, Any]]] = []
    for device, found in by_device.items():
        # The whole filesystem's mount, the shallowest; for btrfs a subvolume's mount will do.
        whole = [f for f in found if f[0]["root"] == "/" or f[1]["type"] == "btrfs"]
        if not whole:
            m = found[0][0]
            skipped += [Skipped("/" + str(_under(m["mountpoint"], root_s)), m["type"], m["source"],
                                f"only the directory {m['root']} of {device} is mounted; mount the whole "
                                "filesystem to capture it") for m, _fs in found]  # fmt: skip
            continue
        best = min(whole, key=lambda f: (f[0]["root"] != "/", f[0]["mountpoint"].count("/"),
                                         f[0]["mountpoint"]))  # fmt: skip
        chosen.append(best)
        at = "/" + str(_under(best[0]["mountpoint"], root_s))
        for m, _fs in found:
            if m is not best[0]:
                skipped.append(Skipped("/" + str(_under(m["mountpoint"], root_s)), m["type"], m["source"],
                                       f"{m['root']} of {device}, captured at {at}"))  # fmt: skip
    chosen.sort(key=lambda f: (f[0]["mountpoint"] != root_s, f[0]["mountpoint"]))
    items: list[CaptureItem] = []
    names: set[str] = set()
    for m, fs in chosen:
        rel = str(_under(m["mountpoint"], root_s))
        patterns: list[str] = []
        whole_excluded = None
        for p in excludes:
            r = rebase_exclude(p, rel)
            if r is True:
                whole_excluded = p
                break
            if isinstance(r, str):
                patterns.append(r)
        if whole_excluded is not None:
            why = f"excluded by --exclude {whole_excluded}"
            skipped.append(Skipped("/" + rel, m["type"], m["source"], why))
            continue
        name = _unique(_archive_name(rel), names)
        items.append(CaptureItem(name, fs["device"], m["type"], "/" + rel, Path(m["mountpoint"]),
                                 fs.get("used_bytes"), tuple(patterns), m["root"]))  # fmt: skip
    items, output_in = _exclude_output(items, list(visible.values()), output_s, layout)
    captured = {i.device for i in items}
    named = {s.source for s in skipped}
    return CapturePlan(
        root=Path(root_s), output=Path(output_s),
        disks=tuple(f"{d['path']} ({_size(d.get('size_bytes'))})" for d in layout["disks"]),
        items=tuple(items),
        swap=tuple(fs["device"] for fs in layout["filesystems"] if fs["type"] == "swap"),
        skipped=tuple(skipped),
        uncaptured=tuple(
            (fs["device"], str(fs["type"])) for fs in layout["filesystems"]
            if fs["type"] != "swap" and fs["device"] not in captured and not (device_names(fs) & named)
        ),
        excludes=tuple(excludes),
        refused=tuple(f"{r.get('reason')} ({r.get('name')})" for r in layout["refused"]),
        output_in=output_in,
    )


def _archive_name(rel: str) -> str:
    """`/` -> root, `boot/efi` -> boot-efi; characters an archive name cannot hold -> `_`."""
    if not rel:
        return "root"
    name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in rel.replace("/", "-"))
    return name if name[0].isalnum() else "fs" + name


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate)
    return candidate


def _exclude_output(
    items: list[CaptureItem], mounts: list[Mount], output: str, layout: Mapping[str, Any]
) -> tuple[list[CaptureItem], str | None]:
    """The output directory, when it lies inside a captured filesystem, is excluded from its
    archive (whatever mount the path goes through, a bind mount too); refused when it is the
    root of one."""
    holders = [m for m in mounts if _under(output, m["mountpoint"]) is not None]
    if not holders:
        return items, None
    m = max(holders, key=lambda h: len(h["mountpoint"]))
    fs = _layout_fs(layout, m) if m["type"] in LOCAL_TYPES else None
    item = next((i for i in items if fs is not None and i.device == fs["device"]), None)
    if item is None:
        return items, None
    inside = os.path.normpath(os.path.join(m["root"], str(_under(output, m["mountpoint"]))))
    rel = _under(inside, item.source_root)
    if rel is None:
        return items, None  # another subvolume than the one captured
    if rel == "":
        raise CaptureError(
            f"the output {output} is the root of {item.mountpoint} ({item.device}), which is captured",
            "write the set to a directory inside it, or to another filesystem (best: another machine)",
        )
    pattern = "/" + _glob_escape(rel)
    return [i if i is not item else replace(i, excludes=(*i.excludes, pattern)) for i in items], \
        f"{item.name} as {pattern}"


class CaptureProgress(Protocol):
    def advance(self, done_bytes: int) -> None:
        """Bytes of file data read so far in the whole set."""

    def archived(self, done: ArchiveDone) -> None:
        """One archive is complete (the items' order)."""


@dataclass(frozen=True)
class CaptureResult:
    manifest: Manifest
    files: int  # entries archived
    data_bytes: int  # file data read
    archive_bytes: int
    seconds: float

    def summary(self, set_dir: Path) -> str:
        rate = self.data_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0
        return (f"captured {len(self.manifest.archives)} filesystems into {set_dir}: {self.files} files, "
                f"{_size(self.data_bytes)} of data, archives {_size(self.archive_bytes)}, "
                f"{self.seconds:.1f} s, {rate:.1f} MB/s")  # fmt: skip


def extra_files(layout: Mapping[str, Any], gap_dir: Path | None) -> list[Path]:
    """The raw files the layout names (disk-NAME-gap.bin, disk-NAME-partN-bios-boot.bin),
    which collect_layout wrote into gap_dir."""
    names = [d["gap"]["file"] for d in layout["disks"] if d.get("gap")]
    names += [p["raw"]["file"] for d in layout["disks"] if d.get("partition_table")
              for p in d["partition_table"]["partitions"] if p.get("raw")]  # fmt: skip
    files = [Path(gap_dir) / n for n in names] if gap_dir is not None else []
    missing = [n for n, f in zip(names, files, strict=False) if not f.is_file()] if gap_dir else names
    if missing:
        raise CaptureError(f"the layout names {', '.join(missing)}, which is not in {gap_dir}",
                           "collect the layout with gap_dir set to where its raw files go")  # fmt: skip
    return files


def annotated_layout(plan: CapturePlan, layout: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the layout whose filesystems each name their archive (null: not archived)
    and have the machine's mount point ("/boot", under the captured root; null when mounted
    only outside it), not where this capture found them mounted (/tmp/capture-source-x/boot)."""
    doc = copy.deepcopy(dict(layout))
    by_device = {i.device: i for i in plan.items}
    for fs in doc["filesystems"]:
        item = by_device.get(fs["device"])
        fs["archive"] = item.name if item else None
        rel = _under(fs["mountpoint"], str(plan.root)) if fs.get("mountpoint") else None
        fs["mountpoint"] = item.mountpoint if item else (None if rel is None else "/" + rel)
    return doc


def run_capture(
    plan: CapturePlan, out_dir: Path, layout: Mapping[str, Any], gap_dir: Path | None,
    progress: CaptureProgress | None = None, *, threads: int | None = None, runner: Runner = run_tool,
) -> CaptureResult:
    """Write the set: layout.json (each filesystem naming its archive), the raw files from
    gap_dir, one archive per plan item, the manifest last. Each filesystem is read through a
    read-only bind mount of it alone (`runner` runs mount/umount), so a mount point is
    archived as the directory it is in its own filesystem, and files hidden under a mount
    point are captured too: the archive is the filesystem as it is, not as it is mounted."""
    doc = annotated_layout(plan, layout)
    extras = extra_files(doc, gap_dir)
    done = [0]

    def advance(n: int) -> None:
        done[0] = n
        if progress is not None:
            progress.advance(n)

    start = time.monotonic()
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaptureError(f"cannot create {out_dir}: {exc.strerror}", "choose another directory") from exc
    with filesystem_views([(i.name, i.path) for i in plan.items], Path(out_dir), runner) as views:
        manifest = write_set(
            out_dir, [SetTree(i.name, views[i.name], i.excludes) for i in plan.items], layout=doc,
            extra_files=extras, threads=threads, progress=advance,
            on_archive=None if progress is None else progress.archived,
        )
    return CaptureResult(
        manifest, sum(len(a.files) for a in manifest.archives), done[0],
        sum(a.size for a in manifest.archives), time.monotonic() - start,
    )


@contextlib.contextmanager
def filesystem_views(
    trees: Sequence[tuple[str, Path]], parent: Path, runner: Runner = run_tool
) -> Iterator[dict[str, Path]]:
    """A read-only bind mount of each (name, path)'s filesystem alone, by name, in a hidden
    directory of `parent` (for a capture the set directory: readers ignore dot names, and when
    the set lies inside a captured filesystem it is excluded with it). Unmounted in reverse
    order, also on error; never removed recursively."""
    scratch = Path(tempfile.mkdtemp(prefix=".capture-views-", dir=parent))
    mounted: list[Path] = []
    try:
        views = {}
        for name, path in trees:
            view = scratch / name
            view.mkdir()
            runner(["mount", "--bind", str(path), str(view)])
            mounted.append(view)
            runner(["mount", "-o", "remount,bind,ro", str(view)])
            views[name] = view
        yield views
    finally:
        for view in reversed(mounted):
            try:
                runner(["umount", str(view)])
            except CaptureError:
                with contextlib.suppress(CaptureError):
                    runner(["umount", "-l", str(view)])
        for name, _path in trees:
            with contextlib.suppress(OSError):
                (scratch / name).rmdir()  # rmdir only: a view still mounted stays untouched
        with contextlib.suppress(OSError):
            scratch.rmdir()


def source_disks(
    mounts: Sequence[Mount], root: Path | str, *, sys_block: Path = Path("/sys/class/block")
) -> list[str]:
    """The whole disks (/dev/NAME) under the local filesystems mounted at or under `root`:
    partitions lead to their disk, device-mapper (LVM) and md devices to their slaves."""
    root_s = os.path.normpath(root)
    by_number: dict[str, str] = {}
    if sys_block.is_dir():
        for entry in sorted(sys_block.iterdir()):
            with contextlib.suppress(OSError):
                by_number[(entry / "dev").read_text().strip()] = entry.name
    disks: list[str] = []
    for m in mounts:
        if m["type"] not in LOCAL_TYPES or _under(m["mountpoint"], root_s) is None:
            continue
        name = os.path.basename(os.path.realpath(m["source"])) if m["source"].startswith("/dev/") else ""
        if not (name and (sys_block / name).exists()):
            name = by_number.get(m["dev"], "")
        if not name:
            continue
        for disk in _whole_disks(sys_block, name, set()):
            if f"/dev/{disk}" not in disks:
                disks.append(f"/dev/{disk}")
    return disks


def _whole_disks(sys_block: Path, name: str, seen: set[str]) -> list[str]:
    if name in seen:
        return []
    seen.add(name)
    node = sys_block / name
    if (node / "partition").exists():
        return _whole_disks(sys_block, Path(os.path.realpath(node)).parent.name, seen)
    slaves = sorted(p.name for p in (node / "slaves").iterdir()) if (node / "slaves").is_dir() else []
    if slaves:
        return [d for s in slaves for d in _whole_disks(sys_block, s, seen)]
    return [name]
