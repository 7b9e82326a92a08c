"""`iso_mode`, or no source named: the rescue disc or stick, found by its marker, never by a
device name (sr0 on one machine is sr1 on the next; a stick is sda or sdc).

The media builders write `/.initrd-composer/medium.json` onto the disc (`compose-initrd iso`,
and the ISO an OBDR tape carries): format, version, the volume label, the kernel and the
initrd's sha256, and `data` when the disc carries the restore data in /data. A medium is
ours when that file parses, its format and version are ours, and its volume_id is the
label the filesystem itself carries: a disc with the same label but no marker (another
RESCUE CD in the drive) is looked at, unmounted and passed over.

Order (kernel sysfs, /sys/class/block): CD/DVD drives first (sr*, SCSI type 5), then
USB or removable disks, then other disks; each whole disk before its partitions, so an
isohybrid stick (the ISO written with dd) is found once, as the disk. Never looked at:
virtual devices (loop, ram, md, dm), floppies (too small for the disc; an empty drive
stalls). Each candidate is mounted read-only under ctx.media_root as cdrom<N>, usb<N> or
disk<N> (N: its place among those of its kind).

The kind reported is "cdrom" for an sr device, "usb" for a disk whose sysfs path goes
through a USB device or that says it is removable, and "disk" for any other disk (a SATA
or NVMe disk carrying a copy of the disc is found too, and says so).

Slow devices: an empty drive, a disc still spinning up, a USB stick the kernel has not
scanned yet. Devices are looked at again every POLL_S until ctx.timeout_s; one refused for
what is on it is not looked at again unless its size changes (another disc). The probe
stops listening for devices when the bus is quiet; a USB stick scanned after that (usb-storage
waits delay_use before scanning, longer on a busy machine) or plugged in while we wait has
no driver yet: each round, USB mass-storage interfaces and SCSI disks/CD drives that no
driver took get theirs from the image's modprobe (by modalias, each once), as udev would.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from initrd_composer.boot import syscalls
from initrd_composer.boot.commands import run_command
from initrd_composer.boot.early import MODPROBE_HELPER
from initrd_composer.boot.sources import Choice, Found, MediaContext, SourceError
from initrd_composer.boot.sources.fs_label import FsInfo, identify
from initrd_composer.boot.sources.marker import MARKER_PATH, check_marker
from initrd_composer.boot.sysfs import read_attr

POLL_S = 0.5
LISTING_MAX = 100
_SKIPPED_PREFIXES = ("fd",)
_USB = re.compile(r"/usb\d+/")
_GROUPS = {"cdrom": 0, "usb": 1, "disk": 2}
_MOUNT_FLAGS = syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV
# ext4 would replay a dirty journal even read-only: that writes to the medium.
_MOUNT_DATA = {"ext4": "noload"}

# SCSI peripheral types sd and sr drive: disk, CD/DVD, optical, reduced block commands.
_SCSI_MEDIA_TYPES = ("0", "5", "7", "14")

Mount = Callable[[str, str, str, int, str], None]  # source, target, fstype, flags, data
Umount = Callable[[str], None]
Load = Callable[[str], str]  # modalias -> "" when loaded, else why not


@dataclass(frozen=True)
class BlockDevice:
    name: str  # sysfs name: sr0, sda, sda1
    node: str  # the device node (DEVNAME under dev_root)
    kind: str  # cdrom | usb | disk (a partition has its disk's)
    disk: str  # the whole disk's name (its own for a disk)
    partition: int  # 0 for a whole disk
    size: int  # bytes, as sysfs says (0: no medium)

    def sort_key(self) -> tuple[Any, ...]:
        return (_GROUPS[self.kind], len(self.disk), _natural(self.disk), self.partition)


def _natural(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _devname(entry: str, name: str) -> str:
    for line in read_attr(f"{entry}/uevent").splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value:
            return value
    return name


def _kind(disk_dir: str, disk: str) -> str:
    if disk.startswith("sr") or read_attr(f"{disk_dir}/device/type") == "5":
        return "cdrom"
    if _USB.search(disk_dir) or read_attr(f"{disk_dir}/removable") == "1":
        return "usb"
    return "disk"


def block_devices(sys_root: str, dev_root: str = "/dev") -> list[BlockDevice]:
    """The block devices worth looking at, in the order they are looked at."""
    base = f"{sys_root}/class/block"
    try:
        names = os.listdir(base)
    except OSError:
        return []
    out: list[BlockDevice] = []
    for name in names:
        entry = f"{base}/{name}"
        real = os.path.realpath(entry)
        if "/devices/virtual/" in real or name.startswith(_SKIPPED_PREFIXES):
            continue
        part = read_attr(f"{entry}/partition")
        partition = int(part) if part.isdigit() else 0
        disk_dir = os.path.dirname(real) if partition else real
        disk = os.path.basename(disk_dir)
        size = read_attr(f"{entry}/size")
        out.append(BlockDevice(name, os.path.join(dev_root, _devname(entry, name)), _kind(disk_dir, disk),
                               disk, partition, int(size) * 512 if size.isdigit() else 0))  # fmt: skip
    return sorted(out, key=BlockDevice.sort_key)


def unbound_media_devices(sys_root: str) -> list[str]:
    """Modaliases of USB mass-storage interfaces and SCSI disks/CD drives without a driver."""
    out: list[str] = []
    for bus in ("usb", "scsi"):
        base = f"{sys_root}/bus/{bus}/devices"
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for name in names:
            entry = f"{base}/{name}"
            alias = read_attr(f"{entry}/modalias")
            if not alias or os.path.exists(f"{entry}/driver"):
                continue
            if bus == "usb":
                wanted = ":" in name and "ic08" in alias  # an interface of class 08, mass storage
            else:
                wanted = read_attr(f"{entry}/type") in _SCSI_MEDIA_TYPES
            if wanted:
                out.append(alias)
    return out


def modprobe(modalias: str, deny: Collection[str] = ()) -> str:
    """Load a late device's driver through the image's modprobe: "" when it went in, else
    why not. What denymods= names stays out, as in the probe (`modprobe -D` tells first)."""
    shown = run_command([MODPROBE_HELPER, "-D", modalias], timeout_s=30)
    if not shown.ok:
        return shown.describe()
    needs = {os.path.basename(line.split()[1]).split(".ko")[0].replace("-", "_")
             for line in shown.output.splitlines() if line.startswith("insmod ")}  # fmt: skip
    if denied := sorted(needs & set(deny)):
        return f"not loaded: denymods= names {', '.join(denied)}"
    result = run_command([MODPROBE_HELPER, "-q", modalias], timeout_s=30)
    return "" if result.ok else result.describe()


@dataclass
class Look:
    """One look at one device: what is on it and why it is not ours ("" when it is)."""

    device: BlockDevice
    fs: FsInfo | None = None
    refused: str = ""
    final: bool = True  # False: nothing readable yet, look again next round

    def record(self) -> dict[str, Any]:
        return {"device": self.device.node, "kind": self.device.kind, "size_bytes": self.device.size,
                "fstype": self.fs.fstype if self.fs else None, "label": self.fs.label if self.fs else None,
                "refused": self.refused or None}  # fmt: skip

    def describe(self) -> str:
        what = f" {self.fs.variant or self.fs.fstype} {self.fs.label!r}" if self.fs else ""
        return f"{self.device.node}{what}: {self.refused or 'ours'}"


def read_filesystem(node: str) -> FsInfo | None:
    """The filesystem on a device node; OSError when it cannot be read (no medium)."""
    fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return identify(lambda offset, size: os.pread(fd, size, offset))
    finally:
        os.close(fd)


def _unmount(target: str, umount: Umount, log: Callable[[str], None]) -> None:
    try:
        umount(target)
    except OSError as exc:
        log(f"media: cannot unmount {target} ({exc.strerror}); detaching it")
        try:
            syscalls.umount(target, syscalls.MNT_DETACH)
        except OSError as again:
            log(f"media: {target} stays mounted: {again.strerror}")
            return
    try:
        os.rmdir(target)
    except OSError:
        pass


def _real_umount(target: str) -> None:
    syscalls.umount(target)


def examine(ctx: MediaContext, dev: BlockDevice, mount_point: str, mount: Mount, umount: Umount,
            ) -> tuple[Look, Found | None]:  # fmt: skip
    """Look at one device; when it is ours, it stays mounted at `mount_point`."""
    look = Look(dev)
    if dev.size == 0 and dev.kind != "cdrom":  # an sr's size is 0 until a disc is read
        look.refused, look.final = "no medium", False
        return look, None
    try:
        look.fs = read_filesystem(dev.node)
    except OSError as exc:
        absent = {errno.ENOMEDIUM: "no medium", errno.ENXIO: "no medium", errno.ENOENT: "no device node yet"}
        look.refused = absent.get(exc.errno or 0, f"cannot read: {exc.strerror}")
        look.final = False
        return look, None
    fs = look.fs
    if fs is None:
        if dev.size == 0:  # an sr that opened but has nothing to read yet
            look.refused, look.final = "no medium", False
        else:
            look.refused = "no filesystem this image reads (iso9660, udf, vfat, ext2/3/4)"
        return look, None
    try:
        os.makedirs(mount_point, exist_ok=True)
        mount(dev.node, mount_point, fs.fstype, _MOUNT_FLAGS, _MOUNT_DATA.get(fs.fstype, ""))
    except OSError as exc:
        look.refused = f"cannot mount {fs.fstype}: {exc.strerror}"
        look.final = exc.errno != errno.ENOMEDIUM
        try:
            os.rmdir(mount_point)
        except OSError:
            pass
        return look, None
    doc, why = check_marker(mount_point, fs.fstype, fs.label)
    if doc is None:
        look.refused = why
        _unmount(mount_point, umount, ctx.log)
        return look, None
    path = os.path.join(mount_point, doc["data"]) if doc.get("data") else mount_point
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        look.refused = f"cannot list {path}: {exc.strerror}"
        _unmount(mount_point, umount, ctx.log)
        return look, None
    data = {"volume_id": fs.label, "fstype": fs.variant or fs.fstype, "marker": doc,
            "listing": names[:LISTING_MAX], "listing_total": len(names)}  # fmt: skip
    return look, Found(dev.kind, dev.node, path, data, (mount_point,))


def _seen(looks: list[Look]) -> dict[str, Any]:
    return {"candidates": [look.record() for look in looks]}


def _failure(looks: list[Look], waited: float) -> SourceError:
    seen = "; ".join(look.describe() for look in looks[:8]) + ("; ..." if len(looks) > 8 else "")
    if any(look.final for look in looks):
        return SourceError(
            f"no medium carries the marker /{MARKER_PATH} (waited {waited:g} s; seen: {seen})",
            "insert the disc or stick `compose-initrd iso` wrote (its ISO copied onto a stick works too), "
            "or name the source: nfsmount=, url=, tapedev=",
            reason="no-marker", data=_seen(looks),
        )
    return SourceError(
        f"no CD/DVD or USB medium found in {waited:g} s (seen: {seen or 'no block device'})",
        "insert the rescue disc or stick; a slow drive may need media_timeout=SECONDS",
        reason="no-medium", data=_seen(looks),
    )


def search(ctx: MediaContext, *, mount: Mount = syscalls.mount, umount: Umount = _real_umount,
           load: Load | None = None) -> Found:  # fmt: skip
    """Poll the block devices until one carries our marker, or ctx.timeout_s has passed."""
    load = load or functools.partial(modprobe, deny=tuple(getattr(ctx.cfg, "denymods", ())))
    started = ctx.clock()
    latest: dict[str, Look] = {}  # device name -> its last look, in the order first seen
    done: set[tuple[str, int]] = set()  # (name, size) refused for what is on it
    drivers: dict[str, str] = {}  # modalias of a late device -> "" (loaded) or why not
    while True:
        for alias in unbound_media_devices(ctx.sys_root):
            if alias not in drivers:
                drivers[alias] = why = load(alias)
                ctx.log(f"media: driver for late device {alias}: {why or 'loaded'}")
        devices = block_devices(ctx.sys_root, ctx.dev_root)
        for dev in devices:
            if (dev.name, dev.size) in done:
                continue
            same_kind = [d.name for d in devices if d.kind == dev.kind]
            mount_point = os.path.join(ctx.media_root, f"{dev.kind}{same_kind.index(dev.name)}")
            look, found = examine(ctx, dev, mount_point, mount, umount)
            before = latest.get(dev.name)
            latest[dev.name] = look  # keeps its place: the order devices were first seen
            if found is not None:
                ctx.log(f"media: {look.describe()}: marker for kernel {found.data['marker'].get('kernel')}")
                found.data["candidates"] = [entry.record() for entry in latest.values()]
                found.data["late_drivers"] = drivers
                return found
            if before is None or before.describe() != look.describe():
                ctx.log(f"media: passed over {look.describe()}")
            if look.final:
                done.add((dev.name, dev.size))
        left = started + ctx.timeout_s - ctx.clock()
        if left <= 0:
            raise _failure(list(latest.values()), round(ctx.clock() - started, 1))
        ctx.sleep(min(POLL_S, left))


def find(ctx: MediaContext, choice: Choice) -> Found:
    if choice.kind != "removable":
        raise SourceError(f"the removable-media finder cannot look for {choice.kind}", reason="bad-spec")
    return search(ctx)
