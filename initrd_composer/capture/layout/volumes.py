"""md arrays and LVM: what `mdadm --detail --export`, /proc/mdstat and LVM's JSON reports say,
and which logical volumes a restore could not recreate (it refuses them before any write)."""

from __future__ import annotations

import re
from typing import Any

from initrd_composer.boot.storage.parse import (
    StorageParseError,
    lvm_json,
    parse_detail_export,
    parse_mdstat,
)
from initrd_composer.capture.layout import LayoutError

__all__ = ["lvm_summary", "md_arrays", "parse_mdstat", "refusal", "refused_volumes", "vgcfgbackup_identity"]

# Plain extents only: a restore recreates these with lvcreate and fills them from an archive.
RESTORABLE_SEGTYPES = frozenset({"linear", "striped"})
# lv_attr's first letter (lvs(8)) for volumes that are more than extents.
_REFUSED_ROLES = {
    "t": "thin pool",
    "V": "thin volume",
    "C": "cache",
    "s": "snapshot",
    "S": "merging snapshot",
    "r": "raid",
    "R": "raid",
    "m": "mirror",
    "M": "mirror",
    "d": "vdo pool",
    "D": "vdo",
    "v": "virtual",
    # LVM's own sub-volumes of the above (lvs -a shows them in brackets).
    "T": "thin pool data",
    "e": "pool or raid metadata",
    "i": "mirror image",
    "I": "raid image",
    "l": "mirror log",
}
_CHUNK = re.compile(r"(\d+)k chunk")


def md_arrays(mdstat_text: str, details: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per array of /proc/mdstat, completed from its `mdadm --detail --export`
    (details maps the kernel name, md127, to that output)."""
    lines = mdstat_text.splitlines()
    arrays = []
    for array in parse_mdstat(mdstat_text):
        # The chunk size sits on the line after the array's ("... 512k chunks"), raid0/4/5/6/10 only.
        chunk = None
        for i, line in enumerate(lines):
            if line.startswith(array.name + " ") and i + 1 < len(lines):
                m = _CHUNK.search(lines[i + 1])
                chunk = int(m.group(1)) * 1024 if m else None
        detail = parse_detail_export(details.get(array.name, ""))
        arrays.append(
            {
                "device": "/dev/" + array.name,
                "level": detail.values.get("MD_LEVEL") or array.level or None,
                "metadata": detail.values.get("MD_METADATA"),
                "uuid": detail.uuid,
                "name": detail.name,
                "raid_devices": int(detail.values["MD_DEVICES"]) if "MD_DEVICES" in detail.values else None,
                "chunk_size_bytes": chunk,
                "members": [{"device": dev, "role": role} for dev, role in detail.devices]
                or [
                    {"device": "/dev/" + name.replace("!", "/"), "role": str(idx)}
                    for name, idx, _ in array.members
                ],
                "active": array.active,
            }
        )
    return arrays


def _report_rows(text: str, key: str) -> list[dict[str, str]]:
    # Rows of every report part: `lvs`, `pvs` and `vgs` have one part, `fullreport` one per VG.
    try:
        doc = lvm_json(text)
    except StorageParseError as exc:
        raise LayoutError(str(exc)) from exc
    rows = []
    for part in doc["report"]:
        if not isinstance(part, dict):
            continue
        # A fullreport part's pv and lv rows belong to the part's one VG without naming it.
        vg_rows = part.get("vg") or [{}]
        vg_name = str(vg_rows[0].get("vg_name", "")) if isinstance(vg_rows[0], dict) else ""
        for row in part.get(key, []):
            if isinstance(row, dict):
                rows.append({"vg_name": vg_name, **{k: str(v) for k, v in row.items()}})
    return rows


def _size(value: str | None) -> int | None:
    text = (value or "").strip().removesuffix("B")
    return int(text) if text.isdigit() else None


def refusal(lv: dict[str, Any]) -> str | None:
    """Why a restore cannot recreate this LV, or None when it is plain extents."""
    role = _REFUSED_ROLES.get((lv.get("attr") or " ")[:1])
    if role:
        return role
    odd = [t for t in lv["segtypes"] if t not in RESTORABLE_SEGTYPES]
    if odd:
        return "segment type " + ",".join(odd)
    if lv.get("origin"):
        return "snapshot"
    if lv.get("pool_lv"):
        return "uses pool " + str(lv["pool_lv"])
    return None


def lvm_summary(vgs_text: str, pvs_text: str, lvs_text: str) -> list[dict[str, Any]]:
    """Volume groups from
    `lvm vgs --reportformat json --units b --nosuffix -o vg_name,vg_uuid,vg_extent_size,vg_size`,
    `lvm pvs ... -o pv_name,pv_uuid,pv_size,vg_name` and
    `lvm lvs -a ... -o lv_name,vg_name,lv_uuid,lv_size,segtype,pool_lv,origin,lv_attr,seg_count`.
    lvs prints one row per segment when asked for segtype, so rows are merged by LV uuid."""
    groups: dict[str, dict[str, Any]] = {}
    for row in _report_rows(vgs_text, "vg"):
        groups[row["vg_name"]] = {
            "name": row["vg_name"],
            "uuid": row.get("vg_uuid"),
            "extent_size_bytes": _size(row.get("vg_extent_size")),
            "size_bytes": _size(row.get("vg_size")),
            "pvs": [],
            "lvs": [],
        }
    for row in _report_rows(pvs_text, "pv"):
        if row.get("vg_name") in groups:
            groups[row["vg_name"]]["pvs"].append(
                {
                    "device": row.get("pv_name"),
                    "uuid": row.get("pv_uuid"),
                    "size_bytes": _size(row.get("pv_size")),
                }
            )
    by_uuid: dict[str, dict[str, Any]] = {}
    for row in _report_rows(lvs_text, "lv"):
        group = groups.get(row.get("vg_name", ""))
        if group is None:
            raise LayoutError(
                f"lvs: LV {row.get('lv_name')!r} of a VG vgs did not list: {row.get('vg_name')!r}"
            )
        uuid = row.get("lv_uuid", "")
        lv = by_uuid.get(uuid)
        if lv is None:
            name = row.get("lv_name", "")
            lv = {
                "name": name.strip("[]"),
                # lvs -a shows LVM's internal sub-volumes (pool metadata, raid images) in brackets.
                "hidden": name.startswith("["),
                "uuid": uuid,
                "size_bytes": _size(row.get("lv_size")),
                "attr": row.get("lv_attr"),
                "origin": row.get("origin") or None,
                "pool_lv": (row.get("pool_lv") or "").strip("[]") or None,
                "segtypes": [],
            }
            by_uuid[uuid] = lv
            group["lvs"].append(lv)
        if row.get("segtype"):
            lv["segtypes"].append(row["segtype"])
    for group in groups.values():
        for lv in group["lvs"]:
            lv["refused"] = refusal(lv)
    return [groups[name] for name in sorted(groups)]


def refused_volumes(groups: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every LV a restore refuses, named VG/LV with the reason, for the layout's top level."""
    return [
        {"kind": "lvm-lv", "name": f"{g['name']}/{lv['name']}", "reason": lv["refused"]}
        for g in groups
        for lv in g["lvs"]
        if lv["refused"]
    ]


_VG_HEAD = re.compile(r'^(\S+) \{\s*$\s*^\s*id = "([^"]+)"', re.MULTILINE)


def vgcfgbackup_identity(text: str) -> tuple[str, str]:
    """The VG name and uuid a `vgcfgbackup -f FILE VG` text describes (its first section)."""
    if 'contents = "Text Format Volume Group"' not in text:
        raise LayoutError(
            "vgcfgbackup: not LVM text metadata", "the file should start with '# Generated by LVM2'"
        )
    m = _VG_HEAD.search(text)
    if m is None:
        raise LayoutError("vgcfgbackup: no volume group section with an id")
    return m.group(1), m.group(2)
