"""`capture capture_to=TARGET`: write a restore set of this machine from the rescue system, as
Clonezilla users expect: the machine's own system is not running, so the capture is
consistent, and RAID and LVM (assembled by the storage stage) are read whatever the source's
kernel could do.

TARGET is an NFS export (`server:/path`, mounted read-write, v4 then v3) or a filesystem found
by `LABEL=`, `UUID=` or `/dev/X` (a USB disk), with `:subdir` for the set's directory below its
root (default `restore-set`). Every disk but the target's and the boot medium is captured; the
machine's filesystems are mounted read-only without journal replay.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from initrd_composer.boot import syscalls
from initrd_composer.boot.cmdline import BootConfig, split_nfs_spec
from initrd_composer.boot.commands import run_command
from initrd_composer.boot.restore.targets import protect, read_target_disks, used_devices

OUT_DIR = Path("/run/initrd-composer/capture/out")  # the target filesystem or export
SOURCE_DIR = Path("/run/initrd-composer/capture/source")  # the machine, mounted read-only
GAP_DIR = Path("/run/initrd-composer/capture/raw")  # the layout's raw files before they go out
DEFAULT_SUBDIR = "restore-set"
Log = Callable[[str], None]


class CaptureModeError(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def split_target(spec: str) -> tuple[str, str]:
    """(where, subdir): `LABEL=usb:sets/a` -> ("LABEL=usb", "sets/a"); NFS specs keep their path
    and use the default subdir."""
    if spec.startswith(("LABEL=", "UUID=", "/dev/")):
        where, _, sub = spec.partition(":")
        return where, sub.strip("/") or DEFAULT_SUBDIR
    return spec, DEFAULT_SUBDIR


def find_device(where: str) -> str:
    """The block device a LABEL=/UUID=/ /dev/ target names (blkid searches every device)."""
    if where.startswith("/dev/"):
        return where
    flag = "-L" if where.startswith("LABEL=") else "-U"
    result = run_command(["blkid", flag, where.split("=", 1)[1]], timeout_s=30, split_stderr=True)
    device = result.output.strip().splitlines()[0] if result.ok and result.output.strip() else ""
    if not device:
        raise CaptureModeError(
            f"capture_to={where}: no such filesystem on this machine",
            "plug in the target disk and give its label (blkid shows them)",
        )
    return device


def _fs_type(device: str) -> str:
    result = run_command(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", device], timeout_s=30, split_stderr=True
    )
    kind = result.output.strip()
    if not result.ok or not kind:
        raise CaptureModeError(
            f"capture_to: {device} holds no filesystem", "make one on it (mkfs.ext4 -L ...)"
        )
    return kind


def _nfs_mount(spec: str, report: dict[str, Any]) -> None:
    """The export, read-write: v4.2, 4.1, 4.0, then v3 (nolock), as the media stage tries them."""
    from initrd_composer.boot.sources.nfs import fstype_of, mount_options  # noqa: PLC0415

    server, path = split_nfs_spec(spec)
    client = next(
        (
            i["address"].split("/")[0]
            for i in (report.get("network") or {}).get("interfaces", [])
            if i.get("address")
        ),
        "",
    )
    if not client:
        raise CaptureModeError(f"capture_to={spec}: the network is not up", "give ip=dhcp or ipconf=")
    errors = []
    for version in ("4.2", "4.1", "4.0", "3"):
        try:
            syscalls.mount(
                f"{server}:{path}",
                str(OUT_DIR),
                fstype_of(version),
                0,
                mount_options(version, server, client),
            )
            return
        except OSError as exc:
            errors.append(f"v{version}: {exc.strerror}")
    raise CaptureModeError(
        f"capture_to={spec}: cannot mount read-write ({'; '.join(errors)})",
        "check the export allows this machine to write (rw, no_root_squash)",
    )


@contextlib.contextmanager
def mounted_target(spec: str, report: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    """The capture target mounted read-write at OUT_DIR; yields (set directory, its device or
    "" for NFS)."""
    where, subdir = split_target(spec)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    device = ""
    if where.startswith(("LABEL=", "UUID=", "/dev/")):
        device = find_device(where)
        try:
            syscalls.mount(device, str(OUT_DIR), _fs_type(device))
        except OSError as exc:
            raise CaptureModeError(
                f"capture_to: cannot mount {device}: {exc.strerror}", "check the disk"
            ) from exc
    else:
        _nfs_mount(where, report)
    try:
        yield OUT_DIR / subdir, device
    finally:
        os.sync()
        with contextlib.suppress(OSError):
            syscalls.umount(str(OUT_DIR))


def source_disk_paths(target_device: str) -> list[str]:
    """Every disk of this machine but the target's and those the rescue system uses."""
    mountinfo = Path("/proc/self/mountinfo").read_text()
    swaps = Path("/proc/swaps").read_text() if Path("/proc/swaps").exists() else ""
    disks = protect(
        read_target_disks(),
        restore_set_devices=[target_device] if target_device else [],
        in_use=used_devices(mountinfo, swaps),
    )
    return [f"/dev/{d.name}" for d in disks if not (d.holds_restore_set or d.is_boot_medium)]


class _Progress:
    """Console lines while archiving: one every few seconds, and one per archive."""

    def __init__(self, log: Log, total: int) -> None:
        self.log, self.total, self.last, self.started = log, max(total, 1), 0.0, time.monotonic()

    def advance(self, done_bytes: int) -> None:
        now = time.monotonic()
        if now - self.last >= 5.0:
            self.last = now
            rate = done_bytes / max(now - self.started, 1e-3) / 1e6
            self.log(f"capture: {done_bytes / 1e6:.0f} of about {self.total / 1e6:.0f} MB ({rate:.1f} MB/s)")

    def archived(self, done: Any) -> None:
        record = done.record
        self.log(f"capture: {record.file}: {len(record.files)} files, {done.data_bytes / 1e6:.1f} MB of data "
                 f"-> {record.size / 1e6:.1f} MB in {done.seconds:.1f} s")  # fmt: skip


def run_capture_mode(cfg: BootConfig, report: dict[str, Any], log: Log) -> dict[str, Any]:
    """The `capture` report section; never raises for a failure the console can explain."""
    from initrd_composer.boot.restore_set import RestoreSetError  # noqa: PLC0415
    from initrd_composer.capture.errors import CaptureError  # noqa: PLC0415
    from initrd_composer.capture.mount_source import capture_machine  # noqa: PLC0415

    section: dict[str, Any] = {"ok": False, "to": cfg.capture_to}
    started = time.monotonic()
    try:
        if not cfg.capture_to:
            raise CaptureModeError("capture needs capture_to=", "give capture_to=LABEL=name or server:/path")
        with mounted_target(cfg.capture_to, report) as (set_dir, device):
            disks = source_disk_paths(device)
            if not disks:
                raise CaptureModeError("no disk to capture on this machine", "check the disks are seen")
            log(f"capture: disks {', '.join(disks)} -> {set_dir}")
            result = capture_machine(
                disks,
                set_dir,
                SOURCE_DIR,
                GAP_DIR,
                log=log,
                progress_factory=lambda total: _Progress(log, total),
            )
            section.update(result)
        section["ok"] = True
        section["detail"] = (
            f"{section.get('files', 0)} files, {section.get('bytes', 0) / 1e6:.1f} MB into {cfg.capture_to}"
        )
    except (CaptureModeError, CaptureError, RestoreSetError) as exc:
        section["error"] = exc.message
        section["hint"] = exc.hint
        log(f"capture FAILED: {exc.message}")
        if exc.hint:
            log(f"hint: {exc.hint}")
    except OSError as exc:
        section["error"] = str(exc)
        log(f"capture FAILED: {exc}")
    section["seconds"] = round(time.monotonic() - started, 1)
    return section
