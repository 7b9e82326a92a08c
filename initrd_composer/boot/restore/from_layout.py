"""The saved machine as the planner sees it, read from a restore set's layout.json (pure).

The layout names things by device path as the source machine saw them (`/dev/vda4`,
`/dev/vg0/root`, `/dev/md0`); partitions are found by their `node`, logical volumes by
`/dev/VG/LV`, arrays by their device, and each filesystem gives its partition, LV or array
the mount point and used bytes the sizing needs. What the planner cannot recreate is refused
here, before any mapping: a layout entry in `refused` (LUKS, firmware RAID, thin pools...),
a disk without a partition table (a whole-disk PV or array member), a PV on an md array.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.model import (
    RESTORABLE_SEGTYPES,
    LogicalVolume,
    MdArray,
    SourceDisk,
    SourcePartition,
    VolumeGroup,
)

_HINT = "restore this machine by hand from the expert shell; the restore set is mounted read-only"


@dataclass(frozen=True)
class PlanInputs:
    sources: tuple[SourceDisk, ...]
    vgs: tuple[VolumeGroup, ...]
    arrays: tuple[MdArray, ...]


def _mount_of(fs: Mapping[str, Any] | None) -> str:
    if fs is None:
        return ""
    if fs.get("type") == "swap":
        return "swap"
    fstab = fs.get("fstab") or {}
    return str(fs.get("mountpoint") or fstab.get("mountpoint") or "")


def _filesystems(layout: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(fs["device"]): fs for fs in layout["filesystems"]}


def _partition(p: Mapping[str, Any], fs: Mapping[str, Any] | None) -> SourcePartition:
    return SourcePartition(
        number=int(p["number"]), start_sector=int(p["start"]), size_sectors=int(p["size"]),
        type_id=str(p["type"]), mount=_mount_of(fs),
        fs_type=str(fs["type"]) if fs is not None else str(p.get("content") or ""),
        used_bytes=fs.get("used_bytes") if fs is not None else None,
    )  # fmt: skip


def _disks(layout: Mapping[str, Any], fss: Mapping[str, Mapping[str, Any]]) -> tuple[SourceDisk, ...]:
    disks = []
    for d in layout["disks"]:
        table = d["partition_table"]
        if table is None:
            raise RestoreRefused(f"saved disk {d['name']} has no partition table (a whole-disk PV or array "
                                 "member): the restore cannot recreate it yet", _HINT)  # fmt: skip
        if table["label"] not in ("gpt", "dos"):
            label = table["label"]
            raise RestoreRefused(f"saved disk {d['name']}: partition table {label!r} is neither gpt nor dos",
                                 _HINT)  # fmt: skip
        parts = sorted(table["partitions"], key=lambda p: int(p["start"]))
        disks.append(SourceDisk(
            name=str(d["name"]), size_bytes=int(d["size_bytes"]),
            logical_sector=int(d.get("logical_sector_size") or table.get("sector_size") or 512),
            wwn=str(d.get("wwn") or ""), serial=str(d.get("serial") or ""), model=str(d.get("model") or ""),
            table=table["label"], partitions=tuple(_partition(p, fss.get(str(p["node"]))) for p in parts),
        ))  # fmt: skip
    return tuple(disks)


def _node_index(layout: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """Partition device path -> (disk name, partition number)."""
    index = {}
    for d in layout["disks"]:
        for p in (d["partition_table"] or {}).get("partitions", []):
            index[str(p["node"])] = (str(d["name"]), int(p["number"]))
    return index


def _place(device: str, index: Mapping[str, tuple[str, int]], what: str) -> tuple[str, int]:
    place = index.get(device)
    if place is None:
        raise RestoreRefused(f"{what} on {device}, which is no saved partition (an md array or a whole "
                             "disk): the restore cannot recreate it yet", _HINT)  # fmt: skip
    return place


def _segtype(lv: Mapping[str, Any]) -> str:
    """The LV's segment type for the planner: the first it cannot recreate, if any."""
    types = [str(t) for t in lv.get("segtypes") or []] or ["linear"]
    return next((t for t in types if t not in RESTORABLE_SEGTYPES), types[0])


def _volume_groups(layout: Mapping[str, Any], fss: Mapping[str, Mapping[str, Any]],
                   index: Mapping[str, tuple[str, int]]) -> tuple[VolumeGroup, ...]:  # fmt: skip
    groups = []
    for g in layout["lvm"]["volume_groups"]:
        pvs = tuple(_place(str(pv["device"]), index, f"PV of volume group {g['name']}") for pv in g["pvs"])
        lvs = []
        for lv in g["lvs"]:
            if lv.get("hidden"):
                continue  # a thin pool's or raid's parts: their owner decides
            fs = fss.get(f"/dev/{g['name']}/{lv['name']}")
            lvs.append(LogicalVolume(
                name=str(lv["name"]), size_bytes=int(lv["size_bytes"]), segtype=_segtype(lv),
                mount=_mount_of(fs), fs_type=str(fs["type"]) if fs is not None else "",
                used_bytes=fs.get("used_bytes") if fs else None,
            ))  # fmt: skip
        groups.append(VolumeGroup(str(g["name"]), int(g["extent_size_bytes"]), pvs, tuple(lvs)))
    return tuple(groups)


def _arrays(layout: Mapping[str, Any], fss: Mapping[str, Mapping[str, Any]],
            index: Mapping[str, tuple[str, int]]) -> tuple[MdArray, ...]:  # fmt: skip
    arrays = []
    for a in layout["md_arrays"]:
        device = str(a["device"])
        members = tuple(_place(str(m["device"]), index, f"member of {device}") for m in a["members"])
        fs = fss.get(device)
        arrays.append(MdArray(
            name=os.path.basename(device), level=str(a["level"]), members=members, mount=_mount_of(fs),
            fs_type=str(fs["type"]) if fs is not None else "",
            used_bytes=fs.get("used_bytes") if fs else None,
        ))  # fmt: skip
    return tuple(arrays)


def plan_inputs(layout: Mapping[str, Any]) -> PlanInputs:
    """The planner's view of a (validated) layout, or RestoreRefused naming what cannot be made."""
    signatures = [r for r in layout["refused"] if r.get("kind") != "lvm-lv"]
    if signatures:
        what = "; ".join(f"{r['name']}: {r['reason']}" for r in signatures)
        raise RestoreRefused(f"the saved machine holds what the restore cannot recreate: {what}", _HINT)
    fss = _filesystems(layout)
    index = _node_index(layout)
    return PlanInputs(_disks(layout, fss), _volume_groups(layout, fss, index), _arrays(layout, fss, index))
