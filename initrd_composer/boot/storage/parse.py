"""Pure readers of what the kernel and the RAID/LVM tools say about assembled storage:
/proc/mdstat, an md array's sysfs directory, `mdadm --detail --export`, LVM's JSON
reports, and the LVM label a physical volume carries. No I/O but reading the paths
given; the tests feed them outputs captured from a real guest (tests/data/storage).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

# LVM2's label (lib/label/label.h): "LABELONE" at the start of one of the first four
# 512-byte sectors, the label type "LVM2 001" 24 bytes into it. lvm itself looks nowhere else.
LVM_LABEL_SECTORS = 4
LVM_LABEL_ID = b"LABELONE"
LVM_LABEL_TYPE = b"LVM2 001"
LVM_LABEL_TYPE_OFFSET = 24
LVM_HEADER_BYTES = LVM_LABEL_SECTORS * 512


class StorageParseError(ValueError):
    """A tool's output that does not have the expected shape (the message quotes it)."""


@dataclass(frozen=True)
class MdstatArray:
    name: str  # md127
    active: bool
    read_only: str  # "", "read-only" or "auto-read-only"
    level: str  # raid1; "" while inactive
    members: tuple[tuple[str, int, str], ...]  # (kernel name, index, flags such as "S", "F")


@dataclass(frozen=True)
class MdSysfs:
    """/sys/block/mdX/md: the kernel's own view of one array."""

    level: str
    array_state: str  # clean, active, inactive, readonly, read-auto, clear, ...
    raid_disks: int | None
    degraded: int | None  # missing members, for levels with redundancy
    sync_action: str  # idle, resync, recover, check, repair, reshape, frozen; "" if none
    metadata_version: str
    uuid: str  # 8-4-4-4-12 as the kernel prints it
    members: tuple[tuple[str, str, str], ...]  # (kernel name, slot or "none", state), slot order


@dataclass(frozen=True)
class MdDetail:
    """`mdadm --detail --export /dev/mdX`: KEY=VALUE lines, MD_DEVICE_<dev>_ROLE/_DEV per member."""

    values: dict[str, str]
    devices: tuple[tuple[str, str], ...]  # (device path, role: "0", "1", "spare", "faulty", ...)
    other_lines: tuple[str, ...]  # warnings and anything not KEY=VALUE

    @property
    def uuid(self) -> str | None:
        return self.values.get("MD_UUID")

    @property
    def name(self) -> str | None:
        return self.values.get("MD_NAME")

    @property
    def devname(self) -> str | None:
        return self.values.get("MD_DEVNAME")


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    path: str | None  # /dev/VG/LV; None for LVs LVM keeps hidden (no device path)
    size_bytes: int | None
    active: bool
    uuid: str


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    uuid: str
    pvs: tuple[str, ...]
    missing_pvs: int
    lvs: tuple[LogicalVolume, ...] = field(default_factory=tuple)


_MDSTAT_LINE = re.compile(r"^(md\w+)\s*:\s*(active|inactive)\b(.*)$")
_MDSTAT_MEMBER = re.compile(r"^(\S+)\[(\d+)\]((?:\([A-Za-z]\))*)$")


def parse_mdstat(text: str) -> list[MdstatArray]:
    """The arrays /proc/mdstat lists ("md127 : active raid1 vda[0] vdb[1]"); other lines
    (Personalities, block counts, progress bars) carry nothing the sysfs files lack."""
    arrays: list[MdstatArray] = []
    for line in text.splitlines():
        m = _MDSTAT_LINE.match(line.strip())
        if m is None:
            continue
        words = m.group(3).split()
        read_only = ""
        while words and words[0].startswith("("):  # (read-only), (auto-read-only)
            read_only = words.pop(0).strip("()")
        level = ""
        if words and _MDSTAT_MEMBER.match(words[0]) is None:
            level = words.pop(0)
        members = []
        for word in words:
            mm = _MDSTAT_MEMBER.match(word)
            if mm is None:
                raise StorageParseError(f"/proc/mdstat: unexpected member {word!r} in {line.strip()!r}")
            members.append((mm.group(1), int(mm.group(2)), mm.group(3).replace("(", "").replace(")", "")))
        arrays.append(MdstatArray(m.group(1), m.group(2) == "active", read_only, level, tuple(members)))
    return arrays


def _read_attr(directory: str, name: str) -> str:
    try:
        with open(os.path.join(directory, name)) as f:
            return f.read().strip()
    except OSError:
        return ""


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def read_md_sysfs(md_dir: str) -> MdSysfs:
    """An array's attributes from its sysfs directory (Documentation/admin-guide/md.rst).
    Missing files read as empty: `degraded` only exists for levels with redundancy."""
    members = []
    try:
        names = sorted(n for n in os.listdir(md_dir) if n.startswith("dev-"))
    except OSError:
        names = []
    for entry in names:
        sub = os.path.join(md_dir, entry)
        members.append((entry[len("dev-"):], _read_attr(sub, "slot") or "none", _read_attr(sub, "state")))
    members.sort(key=lambda m: (not m[1].isdigit(), int(m[1]) if m[1].isdigit() else 0, m[0]))
    return MdSysfs(
        level=_read_attr(md_dir, "level"),
        array_state=_read_attr(md_dir, "array_state"),
        raid_disks=_int_or_none(_read_attr(md_dir, "raid_disks")),
        degraded=_int_or_none(_read_attr(md_dir, "degraded")),
        sync_action=_read_attr(md_dir, "sync_action"),
        metadata_version=_read_attr(md_dir, "metadata_version"),
        uuid=_read_attr(md_dir, "uuid"),
        members=tuple(members),
    )


_DEVICE_KEY = re.compile(r"^MD_DEVICE_(.+?)_(ROLE|DEV)$")


def parse_detail_export(text: str) -> MdDetail:
    """`mdadm --detail --export` output. Each member has MD_DEVICE_<name>_ROLE and
    MD_DEVICE_<name>_DEV (the path); <name> is the path with / as _, so it is only a key."""
    values: dict[str, str] = {}
    roles: dict[str, str] = {}
    paths: dict[str, str] = {}
    order: list[str] = []
    other: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"MD_\S+", key):
            if line:
                other.append(line)
            continue
        m = _DEVICE_KEY.match(key)
        if m is None:
            values[key] = value
            continue
        if m.group(1) not in order:
            order.append(m.group(1))
        (roles if m.group(2) == "ROLE" else paths)[m.group(1)] = value
    devices = tuple((paths.get(k, "/" + k.replace("_", "/")), roles.get(k, "")) for k in order)
    return MdDetail(values, devices, tuple(other))


def mdadm_uuid(kernel_uuid: str) -> str:
    """The kernel's 8-4-4-4-12 array UUID in mdadm's notation (four colon-separated groups
    of eight), the form mdadm.conf and `mdadm --detail` use."""
    digits = kernel_uuid.replace("-", "").lower()
    if not re.fullmatch(r"[0-9a-f]{32}", digits):
        return kernel_uuid
    return ":".join(digits[i : i + 8] for i in range(0, 32, 8))


def md_state(sysfs: MdSysfs) -> str:
    """mdadm's way of putting it: the array state, then "degraded", then a running sync."""
    parts = [sysfs.array_state or "unknown"]
    if sysfs.degraded:
        parts.append("degraded")
    if sysfs.sync_action and sysfs.sync_action not in ("idle", "frozen"):
        parts.append(sysfs.sync_action)
    return ", ".join(parts)


def member_path(kernel_name: str) -> str:
    """/dev path of a member named as sysfs names it (cciss!c0d0 is /dev/cciss/c0d0)."""
    return "/dev/" + kernel_name.replace("!", "/")


def lvm_json(output: str) -> dict[str, Any]:
    """The JSON document of an `lvm ... --reportformat json` run whose stderr went into the
    same pipe: LVM's report lines all start with one of { } [ ] " , after indentation, its
    messages ("  WARNING: ...") never do, so the messages are dropped line by line."""
    kept = [line for line in output.splitlines() if line.strip()[:1] in ("{", "}", "[", "]", '"', ",")]
    if not kept:
        raise StorageParseError(f"no JSON report in the output: {output.strip()[:200]!r}")
    try:
        doc = json.loads("\n".join(kept))
    except json.JSONDecodeError as exc:
        raise StorageParseError(f"the LVM report is not JSON ({exc.msg}): {output.strip()[:200]!r}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("report"), list):
        raise StorageParseError(f"the LVM report has no 'report' list: {output.strip()[:200]!r}")
    return doc


def _bytes(value: str) -> int | None:
    """A size of `--units b` (with or without --nosuffix): "8388608B" or "8388608"."""
    text = value.strip().removesuffix("B")
    return int(text) if text.isdigit() else None


def _rows(part: dict[str, Any], key: str) -> list[dict[str, str]]:
    rows = part.get(key, [])
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def parse_fullreport(output: str) -> list[VolumeGroup]:
    """`lvm fullreport --reportformat json`: one report per VG, each with its vg, pv and lv
    rows (the fields FULLREPORT_FIELDS in assemble.py asks for)."""
    groups: list[VolumeGroup] = []
    for part in lvm_json(output)["report"]:
        if not isinstance(part, dict):
            continue
        vgs = _rows(part, "vg")
        if not vgs:
            continue  # orphan PVs (in no VG) come as a report without a vg row
        vg = vgs[0]
        lvs = tuple(
            LogicalVolume(
                name=lv.get("lv_name", ""),
                path=lv.get("lv_path") or None,
                size_bytes=_bytes(lv.get("lv_size", "")),
                active=lv.get("lv_active", "") == "active" or lv.get("lv_attr", "     ")[4:5] == "a",
                uuid=lv.get("lv_uuid", ""),
            )
            for lv in _rows(part, "lv")
        )
        pvs = tuple(pv.get("pv_name", "") for pv in _rows(part, "pv"))
        missing = _int_or_none(vg.get("vg_missing_pv_count", "")) or 0
        groups.append(VolumeGroup(vg.get("vg_name", ""), vg.get("vg_uuid", ""), pvs, missing, lvs))
    return sorted(groups, key=lambda g: g.name)


def has_lvm_label(header: bytes) -> bool:
    """Whether the first sectors of a block device carry an LVM2 physical volume label."""
    for sector in range(LVM_LABEL_SECTORS):
        at = sector * 512
        if header[at : at + len(LVM_LABEL_ID)] == LVM_LABEL_ID:
            kind = header[at + LVM_LABEL_TYPE_OFFSET : at + LVM_LABEL_TYPE_OFFSET + len(LVM_LABEL_TYPE)]
            if kind == LVM_LABEL_TYPE:
                return True
    return False
