"""What the restore plan is made from: the saved machine's disks, partitions, volume groups and
md arrays (as the layout capture recorded them) and the new machine's disks (as /sys shows them).

Frozen dataclasses with plain fields, so the capture's JSON maps onto them one key per field.
Sizes are bytes unless the name says sectors; sector counts are in the disk's own logical
sector size. A partition's role is derived (GPT type GUID or MBR id first, then the filesystem
and the mount point) rather than stored, so a capture cannot contradict it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MIB = 1 << 20
GIB = 1 << 30

Role = Literal["bios-boot", "esp", "boot", "swap", "md-member", "lvm-pv", "data"]
# Partitions that keep their size whatever the target disk: firmware and boot loaders expect
# what they had, and a bigger swap or /boot buys nothing.
FIXED_ROLES: frozenset[str] = frozenset({"bios-boot", "esp", "boot", "swap"})

# GPT partition type GUIDs (upper case) and MBR ids (lower-case hex, as sfdisk prints them).
_TYPE_ROLES: dict[str, Role] = {
    "21686148-6449-6E6F-744E-656564454649": "bios-boot",
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "esp",
    "BC13C2FF-59E6-4262-A352-B275FD6F7172": "boot",  # XBOOTLDR
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "swap",
    "A19D880F-05FC-4D3B-A006-743F0F84911E": "md-member",
    "E6D6D379-F507-44C2-A23C-238F2A3DF928": "lvm-pv",
    "ef": "esp",
    "ea": "boot",
    "82": "swap",
    "fd": "md-member",
    "8e": "lvm-pv",
}
_FS_ROLES: dict[str, Role] = {"swap": "swap", "linux_raid_member": "md-member", "LVM2_member": "lvm-pv"}
_MOUNT_ROLES: dict[str, Role] = {"/boot/efi": "esp", "/efi": "esp", "/boot": "boot", "swap": "swap"}
# MBR extended-partition containers: their size is their logical partitions', not their own.
EXTENDED_IDS = frozenset({"5", "05", "f", "0f", "85"})


def normal_type_id(type_id: str) -> str:
    """GUIDs upper case, MBR ids lower-case hex without 0x ("0x83" -> "83")."""
    text = type_id.strip()
    if "-" in text:
        return text.upper()
    return text.lower().removeprefix("0x")


@dataclass(frozen=True)
class SourcePartition:
    number: int
    start_sector: int
    size_sectors: int
    type_id: str  # GPT type GUID or MBR id ("83", "0x83")
    mount: str = ""  # "" when not mounted; "swap" for an active swap
    fs_type: str = ""  # blkid's TYPE: ext4, xfs, vfat, swap, LVM2_member, linux_raid_member
    used_bytes: int | None = None  # the filesystem's used bytes; None when not known

    @property
    def role(self) -> Role:
        by_type = _TYPE_ROLES.get(normal_type_id(self.type_id))
        if by_type is not None:
            return by_type
        return _FS_ROLES.get(self.fs_type) or _MOUNT_ROLES.get(self.mount) or "data"

    @property
    def is_extended(self) -> bool:
        return normal_type_id(self.type_id) in EXTENDED_IDS


@dataclass(frozen=True)
class SourceDisk:
    name: str  # sda, nvme0n1, vda
    size_bytes: int
    logical_sector: int  # 512 or 4096
    wwn: str = ""
    serial: str = ""
    model: str = ""
    table: Literal["gpt", "dos"] = "gpt"
    partitions: tuple[SourcePartition, ...] = ()  # in the order they lie on the disk
    transport: str = ""  # nvme, virtio, sata, usb: for the console lines only

    def partition(self, number: int) -> SourcePartition | None:
        return next((p for p in self.partitions if p.number == number), None)


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    size_bytes: int
    segtype: str = "linear"  # lvs' segtype: linear, striped, thin-pool, thin, snapshot, cache, raid1...
    mount: str = ""
    fs_type: str = ""
    used_bytes: int | None = None

    @property
    def is_fixed(self) -> bool:
        """Swap keeps its size, as a swap partition does."""
        return self.fs_type == "swap" or self.mount == "swap"


# Segment types recreated by a plain `lvcreate -L`: the others (thin pools and their volumes,
# snapshots, caches, raid and mirror segments) need their own recipe, which the restore has not.
RESTORABLE_SEGTYPES = frozenset({"linear", "striped"})


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    extent_bytes: int  # vg_extent_size, usually 4 MiB
    pvs: tuple[tuple[str, int], ...]  # (source disk name, partition number) of each PV
    lvs: tuple[LogicalVolume, ...] = ()


@dataclass(frozen=True)
class MdArray:
    name: str  # md0
    level: str  # raid1 (the only level planned so far)
    members: tuple[tuple[str, int], ...]  # (source disk name, partition number) of each member
    fs_type: str = ""
    mount: str = ""
    used_bytes: int | None = None  # the array's filesystem's used bytes


@dataclass(frozen=True)
class ExistingPartition:
    """A partition a target disk has already (what `nopart` restores into)."""

    number: int
    start_bytes: int
    size_bytes: int


@dataclass(frozen=True)
class TargetDisk:
    name: str
    size_bytes: int
    logical_sector: int
    wwn: str = ""
    serial: str = ""
    model: str = ""
    transport: str = ""  # nvme, virtio, sata, usb
    holds_restore_set: bool = False
    is_boot_medium: bool = False
    partitions: tuple[ExistingPartition, ...] = ()

    def partition(self, number: int) -> ExistingPartition | None:
        return next((p for p in self.partitions if p.number == number), None)


def human_bytes(n: int) -> str:
    """1 decimal in the largest binary unit that keeps the number >= 1: "20.0 GiB", "512.0 MiB"."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    raise AssertionError("unreachable")
