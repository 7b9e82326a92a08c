"""Filesystems: identity from `blkid -p -o export`, creation features from `dumpe2fs -h`
and `xfs_info`/`xfs_db -r -c info`, btrfs subvolumes, /etc/fstab and /proc/self/mountinfo."""

from __future__ import annotations

import re
from typing import Any

from initrd_composer.capture.layout import LayoutError

# Signatures that are not filesystems but members of something the md and LVM sections describe.
MEMBER_TYPES = frozenset(
    {"linux_raid_member", "LVM2_member", "crypto_LUKS", "ddf_raid_member", "isw_raid_member"}
)


def parse_blkid_export(text: str) -> dict[str, str]:
    """`blkid -o export` (one device): KEY=VALUE lines, values with shell-style backslash
    escapes for spaces and specials ("EFI\\ System")."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", key):
            values[key] = re.sub(r"\\(.)", r"\1", value)
    return values


def identity(blkid: dict[str, str]) -> dict[str, Any]:
    """The filesystem fields of one blkid export: type, UUID, label, version (FAT12/16/32, ...)."""
    return {
        "type": blkid.get("TYPE"),
        "uuid": blkid.get("UUID"),
        "label": blkid.get("LABEL"),
        "version": blkid.get("VERSION"),
    }


def _colon_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key and not key.startswith(" "):
            fields[key.strip()] = value.strip()
    return fields


def parse_dumpe2fs(text: str) -> dict[str, Any]:
    """`dumpe2fs -h DEVICE`: what mke2fs needs to recreate the filesystem alike."""
    f = _colon_fields(text)
    if "Filesystem features" not in f or "Block size" not in f:
        raise LayoutError(f"dumpe2fs -h: no superblock summary: {text.strip()[:200]!r}")
    block_size = int(f["Block size"])
    inodes = int(f["Inode count"])
    blocks = int(f["Block count"])
    return {
        "features": f["Filesystem features"].split(),
        "block_size": block_size,
        "inode_size": int(f.get("Inode size", "128")),
        "inode_count": inodes,
        "block_count": blocks,
        # mke2fs -i: bytes per inode, what keeps the inode count when the size changes.
        "inode_ratio": blocks * block_size // inodes if inodes else None,
        "reserved_blocks": int(f.get("Reserved block count", "0")),
        "uuid": f.get("Filesystem UUID"),
        "label": None if f.get("Filesystem volume name") in (None, "<none>") else f["Filesystem volume name"],
        "default_mount_options": f.get("Default mount options", "").split(),
    }


_XFS_PAIR = re.compile(r"([a-z0-9_-]+)=(\S+?),?(?=\s|$)")
_XFS_SECTION = re.compile(r"^(meta-data|data|naming|log|realtime)\s*=")


def parse_xfs_info(text: str) -> dict[str, Any]:
    """`xfs_info MOUNTPOINT` or `xfs_db -r -c info DEVICE` (the same report): the mkfs.xfs
    options. Keys repeat across sections (bsize, sectsz), so each is read per section."""
    sections: dict[str, dict[str, str]] = {}
    heads: dict[str, str] = {}  # the words before the first key: "=internal log", "=version 2"
    current = ""
    for raw in text.splitlines():
        m = _XFS_SECTION.match(raw)
        if m:
            current = m.group(1)
            line = raw[m.end() :]
            heads[current] = line.split("=", 1)[0]
        elif raw.lstrip().startswith("="):
            line = raw.lstrip()[1:]
        else:
            continue
        for key, value in _XFS_PAIR.findall(line):
            sections.setdefault(current, {}).setdefault(key, value)
    meta, data, log = sections.get("meta-data", {}), sections.get("data", {}), sections.get("log", {})
    if "bsize" not in data or "isize" not in meta:
        raise LayoutError(f"xfs_info: no meta-data/data sections: {text.strip()[:200]!r}")

    def flag(key: str) -> bool | None:
        return None if key not in meta else meta[key] == "1"

    log_blocks = int(log.get("blocks", "0"))
    log_bsize = int(log.get("bsize", data["bsize"]))
    return {
        "crc": flag("crc"),
        "reflink": flag("reflink"),
        "finobt": flag("finobt"),
        "rmapbt": flag("rmapbt"),
        "sparse_inodes": flag("sparse"),
        "bigtime": flag("bigtime"),
        "inobtcount": flag("inobtcount"),
        "nrext64": flag("nrext64"),
        "inode_size": int(meta["isize"]),
        "ag_count": int(meta["agcount"]) if "agcount" in meta else None,
        "block_size": int(data["bsize"]),
        "data_blocks": int(data.get("blocks", "0")),
        "sector_size": int(meta.get("sectsz", "512")),
        "log_internal": "internal" in heads.get("log", ""),
        "log_size_bytes": log_blocks * log_bsize,
    }


_SUBVOL = re.compile(
    r"^ID (\d+) gen (\d+) parent (\d+) top level (\d+)(?: parent_uuid (\S+))?(?: received_uuid (\S+))?"
    r" uuid (\S+) path (.+)$"
)


def parse_btrfs_subvolumes(text: str) -> list[dict[str, Any]]:
    """`btrfs subvolume list -p -u MOUNTPOINT`: id, parent id, uuid and path of each subvolume."""
    subvolumes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _SUBVOL.match(line.strip())
        if m is None:
            raise LayoutError(f"btrfs subvolume list: unexpected line {line.strip()!r}")
        subvolumes.append(
            {"id": int(m.group(1)), "parent": int(m.group(3)), "uuid": m.group(7), "path": m.group(8)}
        )
    return subvolumes


def _fstab_unescape(field: str) -> str:
    # fstab(5): spaces and tabs in a field are written as \040 and \011.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_fstab(text: str) -> list[dict[str, Any]]:
    """/etc/fstab: spec (UUID=, LABEL=, PARTUUID=, PARTLABEL=, a path), mount point, type,
    options, dump and pass, in file order."""
    entries = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) < 3:
            raise LayoutError(f"/etc/fstab: too few fields in {raw.strip()!r}")
        words += ["defaults", "0", "0"][len(words) - 3 :]
        entries.append(
            {
                "spec": _fstab_unescape(words[0]),
                "mountpoint": _fstab_unescape(words[1]),
                "type": words[2],
                "options": words[3].split(","),
                "dump": int(words[4]) if words[4].isdigit() else 0,
                "pass": int(words[5]) if words[5].isdigit() else 0,
            }
        )
    return entries


def fstab_matches(spec: str, fs: dict[str, Any], device_paths: set[str]) -> bool:
    """Whether an fstab spec names this filesystem (fs holds uuid/label/partuuid/partlabel)."""
    key, sep, value = spec.partition("=")
    if sep and key in ("UUID", "LABEL", "PARTUUID", "PARTLABEL"):
        have = fs.get(key.lower())
        if have is None:
            return False
        # UUIDs are case-insensitive (blkid prints lower case, people write either).
        return bool(have == value if key in ("LABEL", "PARTLABEL") else have.lower() == value.lower())
    return spec in device_paths


def parse_mountinfo(text: str) -> list[dict[str, str]]:
    """/proc/self/mountinfo: major:minor, mount point, fs type and source of each mount."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        words, tail = left.split(), right.split()
        if not sep or len(words) < 5 or len(tail) < 2:
            continue
        mounts.append(
            {
                "dev": words[2],
                "root": _fstab_unescape(words[3]),
                "mountpoint": _fstab_unescape(words[4]),
                "type": tail[0],
                "source": _fstab_unescape(tail[1]),
            }
        )
    return mounts
