"""The new machine's disks as the restore planner sees them, read from /sys (the root injected
for tests), and which of them may never be written.

A disk is a /sys/block entry with a device behind it that is neither a CD-ROM, a loop, RAM,
zram, md or device-mapper node, nor read-only. Identity: WWN (`wwid`, `device/wwid`, or a
SCSI VPD 83h name), serial (`serial`, `device/serial`), model. A disk is *protected* when
anything the rescue system uses lives on it: a mounted filesystem (the restore set's USB disk,
a loop-mounted ISO's file), an active swap, or the device the media stage found the set on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from initrd_composer.boot.restore.model import ExistingPartition, TargetDisk

_SKIPPED_PREFIXES = ("loop", "ram", "zram", "md", "dm-", "sr", "nbd", "fd")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _transport(block: Path) -> str:
    """nvme, virtio, usb, sata/scsi: from the device's path in /sys, for the console lines."""
    real = os.path.realpath(block)
    for word, name in (("/nvme", "nvme"), ("/virtio", "virtio"), ("/usb", "usb"), ("/ata", "sata")):
        if word in real:
            return name
    return "scsi" if "/host" in real else ""


def _wwn(block: Path) -> str:
    for rel in ("wwid", "device/wwid"):
        text = _read(block / rel)
        if text:
            return text.split()[0] if text.startswith(("naa.", "eui.", "t10.", "nvme.")) else text
    return ""


def read_target_disks(sys_root: Path = Path("/sys")) -> list[TargetDisk]:
    """Every writable disk, sorted by name."""
    disks = []
    base = sys_root / "block"
    for block in sorted(base.iterdir()) if base.is_dir() else []:
        name = block.name
        if name.startswith(_SKIPPED_PREFIXES) or not (block / "device").exists():
            continue
        if _read(block / "ro") == "1":
            continue
        sectors = _read(block / "size")
        if not sectors.isdigit() or int(sectors) == 0:
            continue
        logical = _read(block / "queue" / "logical_block_size")
        disks.append(
            TargetDisk(
                name=name,
                size_bytes=int(sectors) * 512,  # /sys counts 512-byte units whatever the disk
                logical_sector=int(logical) if logical.isdigit() else 512,
                wwn=_wwn(block),
                serial=_read(block / "serial") or _read(block / "device" / "serial"),
                model=_read(block / "device" / "model"),
                transport=_transport(block),
                partitions=_partitions(block),
            )
        )
    return disks


def _partitions(block: Path) -> tuple[ExistingPartition, ...]:
    """The disk's partitions as the kernel has them (/sys/block/DISK/PART/{partition,start,
    size}, in 512-byte units whatever the disk), by number."""
    found = []
    for entry in block.iterdir():
        number, start, size = (_read(entry / key) for key in ("partition", "start", "size"))
        if number.isdigit() and start.isdigit() and size.isdigit():
            found.append(ExistingPartition(int(number), int(start) * 512, int(size) * 512))
    return tuple(sorted(found, key=lambda p: p.number))


def disk_of(device: str, sys_root: Path = Path("/sys")) -> str:
    """The whole disk a block device lies on ("/dev/sdb1" -> "sdb"; a disk itself -> its name;
    dm/md -> the disks under them are found by holders_of); "" when it is not a block device."""
    name = os.path.basename(os.path.realpath(device)) if device.startswith("/dev/") else ""
    if not name:
        return ""
    link = sys_root / "class" / "block" / name
    if not link.exists():
        return ""
    if (link / "partition").exists():
        return Path(os.path.realpath(link)).parent.name
    return name


def disks_under(name: str, sys_root: Path = Path("/sys")) -> set[str]:
    """The whole disks a block device (a partition, dm or md node) is built on, through `slaves`."""
    found: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        link = sys_root / "class" / "block" / current
        slaves = link / "slaves"
        below = sorted(p.name for p in slaves.iterdir()) if slaves.is_dir() else []
        if below:
            todo.extend(below)
        elif (link / "partition").exists():
            found.add(Path(os.path.realpath(link)).parent.name)
        elif link.exists():
            found.add(current)
    return found


def used_devices(mountinfo: str, swaps: str) -> list[str]:
    """The block devices the rescue system has mounted or swaps on (major:minor names are not
    needed: mountinfo's source field names the device)."""
    devices = []
    for line in mountinfo.splitlines():
        _, _, post = line.partition(" - ")
        fields = post.split()
        if len(fields) >= 2 and fields[1].startswith("/dev/"):
            devices.append(fields[1])
    for line in swaps.splitlines()[1:]:
        if line.startswith("/dev/"):
            devices.append(line.split()[0])
    return devices


def protect(
    disks: Iterable[TargetDisk],
    *,
    restore_set_devices: Iterable[str],
    in_use: Iterable[str],
    sys_root: Path = Path("/sys"),
) -> list[TargetDisk]:
    """Mark the disks the restore set lies on, and those the rescue system uses, as never to be
    written (the planner then leaves them alone and says why)."""
    holding = set().union(
        *(disks_under(disk_of(d, sys_root) or os.path.basename(d), sys_root) for d in restore_set_devices)
    )
    busy = set().union(*(disks_under(os.path.basename(os.path.realpath(d)), sys_root) for d in in_use))
    out = []
    for disk in disks:
        if disk.name in holding:
            out.append(replace(disk, holds_restore_set=True))
        elif disk.name in busy:
            out.append(replace(disk, is_boot_medium=True))
        else:
            out.append(disk)
    return out
