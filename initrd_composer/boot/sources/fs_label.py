"""Which filesystem a block device holds, and its label, from the first sectors (pure).

The image has no util-linux blkid and Debian's static busybox has no blkid applet, so the
removable-media finder reads the few on-disk headers it needs itself:

- ISO 9660: a primary volume descriptor (type 1, "CD001") from sector 16 on, volume id at
  byte 40 (32 characters, space padded). A disc that is also UDF (a bridge disc) is iso9660.
- UDF: "NSR02"/"NSR03" in the volume recognition sequence at 32 KiB; the label is the
  logical volume identifier (as blkid gives it), from the descriptor sequence the anchor at
  block 256 points to (block sizes 2048, 512 and 4096 tried).
- FAT12/16/32: the boot sector's type string and its volume label (blkid prefers the root
  directory's label entry; mkfs.fat -n writes both alike).
- ext2/3/4: the superblock at 1 KiB (magic 0xEF53), volume name at byte 120.

`read(offset, size)` returns what is there, shorter at the end of the device.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

Read = Callable[[int, int], bytes]
ISO_SECTOR = 2048
_VRS_START = 16 * ISO_SECTOR  # 32 KiB, the ISO 9660 system area before it
_VRS_MAX = 32  # descriptors looked at before giving up
_UDF_ANCHOR_BLOCK = 256
_EXT_MAGIC = 0xEF53


@dataclass(frozen=True)
class FsInfo:
    fstype: str  # the kernel's name for mount(2): iso9660, udf, vfat, ext4
    label: str
    variant: str = ""  # what it really is when the kernel mounts it by another name (ext2)


def identify(read: Read) -> FsInfo | None:
    """The filesystem on a device, or None if none of the known ones."""
    vrs = _recognition(read)
    if "CD001" in vrs:
        return FsInfo("iso9660", vrs["CD001"])
    if "NSR02" in vrs or "NSR03" in vrs:
        return FsInfo("udf", _udf_label(read))
    return _ext(read) or _fat(read)


def _recognition(read: Read) -> dict[str, str]:
    """Identifiers of the ISO 9660 / ECMA-167 recognition sequence -> the ISO volume id
    ("" for the others). Stops at the first sector that is not such a descriptor."""
    seen: dict[str, str] = {}
    for i in range(_VRS_MAX):
        sector = read(_VRS_START + i * ISO_SECTOR, ISO_SECTOR)
        if len(sector) < 190:
            break
        ident = sector[1:6].decode("ascii", "replace")
        if ident not in ("CD001", "BEA01", "NSR02", "NSR03", "TEA01", "BOOT2", "CDW02"):
            break
        if ident != "CD001":
            seen.setdefault(ident, "")
        elif sector[0] == 1 and "CD001" not in seen:  # the primary volume descriptor
            seen["CD001"] = _text(sector[40:72])
    return seen


def _udf_label(read: Read) -> str:
    for block in (2048, 512, 4096):
        anchor = read(_UDF_ANCHOR_BLOCK * block, 512)
        if len(anchor) < 24:
            continue
        (tag_id,) = struct.unpack_from("<H", anchor, 0)
        (location,) = struct.unpack_from("<I", anchor, 12)
        if tag_id != 2 or location != _UDF_ANCHOR_BLOCK:
            continue
        length, start = struct.unpack_from("<II", anchor, 16)  # main volume descriptor sequence
        for n in range(min(length // block, 64)):
            desc = read((start + n) * block, 512)
            if len(desc) < 212:
                break
            (tag_id,) = struct.unpack_from("<H", desc, 0)
            if tag_id == 6:  # logical volume descriptor: identifier dstring[128] at 84
                return _dstring(desc[84:212])
            if tag_id == 8:  # terminating descriptor
                break
        return ""
    return ""


def _dstring(field: bytes) -> str:
    """An OSTA compressed unicode dstring: compression id, characters, length last."""
    used = field[-1]
    if used < 1 or used > len(field) - 1:
        return ""
    body = field[1:used]
    if field[0] == 16:
        return body.decode("utf-16-be", "replace").rstrip()
    return body.decode("latin-1").rstrip()


def _ext(read: Read) -> FsInfo | None:
    sb = read(1024, 1024)
    if len(sb) < 136 or struct.unpack_from("<H", sb, 56)[0] != _EXT_MAGIC:
        return None
    compat, incompat = struct.unpack_from("<II", sb, 92)
    if incompat & (0x40 | 0x80 | 0x200):  # extents, 64bit, flex_bg
        variant = "ext4"
    else:
        variant = "ext3" if compat & 0x4 else "ext2"  # has_journal
    # Debian's ext4 driver mounts ext2 and ext3 too (CONFIG_EXT4_USE_FOR_EXT2).
    return FsInfo("ext4", _text(sb[120:136]), variant)


def _fat(read: Read) -> FsInfo | None:
    boot = read(0, 512)
    if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
        return None
    (sector_size,) = struct.unpack_from("<H", boot, 11)
    if sector_size not in (512, 1024, 2048, 4096) or boot[13] == 0:  # sectors per cluster
        return None
    if boot[82:87] == b"FAT32":
        label = _text(boot[71:82]) if boot[66] == 0x29 else ""
    elif boot[54:57] == b"FAT":
        label = _text(boot[43:54]) if boot[38] == 0x29 else ""
    else:
        return None  # a partition table (MBR), or some other boot sector
    return FsInfo("vfat", "" if label == "NO NAME" else label)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1").rstrip(" ")
