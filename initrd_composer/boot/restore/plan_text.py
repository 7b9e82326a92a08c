"""The restore plan for people and for the report (pure): console lines printed before the
first write, and the JSON-able `restore` section (mapping, plan, reasons, the disks left alone; or the
refusal)."""

from __future__ import annotations

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.model import SourceDisk, TargetDisk, human_bytes
from initrd_composer.boot.restore.sizing import (
    DiskPlan,
    MdPlan,
    PartitionPlan,
    RestorePlan,
    VgPlan,
    partition_name,
)


def disk_text(disk: SourceDisk | TargetDisk) -> str:
    ids = [f"{label} {value}" for label, value in (("WWN", disk.wwn), ("serial", disk.serial)) if value]
    return ", ".join([f"{disk.transport or 'disk'} {human_bytes(disk.size_bytes)}", *ids])


def _what(role: str, fs_type: str, mount: str) -> str:
    """"esp vfat /boot/efi"; a swap partition is just "swap", not "swap swap swap"."""
    return " ".join(dict.fromkeys(x for x in (role, fs_type, mount) if x))


def _partition_line(disk: DiskPlan, part: PartitionPlan) -> str:
    src, target = disk.assignment.source.name, disk.assignment.target.name
    return (
        f"  {partition_name(src, part.number)} -> {partition_name(target, part.number)} "
        f"[{_what(part.role, part.fs_type, part.mount)}]: {human_bytes(part.old_bytes)} -> "
        f"{human_bytes(part.new_bytes)} ({part.how}, start {part.start_sector}, "
        f"{part.size_sectors} sectors of {part.sector})"
    )


def _vg_lines(vg: VgPlan) -> list[str]:
    head = f"vg {vg.name} ({human_bytes(vg.extent_bytes)} extents)"
    lines = [f"{head}: {vg.old_extents} -> {vg.new_extents} extents"]
    lines.extend(
        f"  {vg.name}/{lv.name}: {human_bytes(lv.old_bytes)} -> {human_bytes(lv.new_bytes)} "
        f"({'fixed' if lv.fixed else 'scaled'}, {lv.new_extents} extents)"
        for lv in vg.lvs
    )
    return lines


def _md_line(md: MdPlan) -> str:
    members = ", ".join(partition_name(disk, number) for disk, number in md.members)
    sizes = f"{human_bytes(md.old_bytes)} -> {human_bytes(md.new_bytes)}"
    return f"md {md.name} ({md.level} on {members}): {sizes}"


def plan_lines(plan: RestorePlan) -> list[str]:
    """sda (virtio 20.0 GiB, serial X) -> nvme0n1 (nvme 30.0 GiB): by size, then its partitions,
    then the volume groups and md arrays, then the target disks left alone and why."""
    lines: list[str] = []
    for disk in plan.disks:
        a = disk.assignment
        source = f"{a.source.name} ({disk_text(a.source)})"
        lines.append(f"{source} -> {a.target.name} ({disk_text(a.target)}): {a.reason}")
        lines.extend(_partition_line(disk, part) for part in disk.partitions)
    for vg in plan.vgs:
        lines.extend(_vg_lines(vg))
    lines.extend(_md_line(md) for md in plan.arrays)
    lines.extend(f"not written: {t.name} ({disk_text(t)}): {why}" for t, why in plan.unused)
    if plan.in_place:
        lines.append("nopart: no partition table is written; the partitions above are used as they are")
    return lines


def refusal_lines(refused: RestoreRefused) -> list[str]:
    return [f"restore refused, nothing written: {refused.message}", *refused.hint.splitlines()]


def plan_dict(plan: RestorePlan) -> dict[str, object]:
    """The report's `restore` section: which disk went where and why, and every size."""
    mapping = [
        {
            "source": d.assignment.source.name,
            "target": d.assignment.target.name,
            "reason": d.assignment.reason,
            "source_bytes": d.assignment.source.size_bytes,
            "target_bytes": d.assignment.target.size_bytes,
        }
        for d in plan.disks
    ]
    disks = [
        {
            "source": d.assignment.source.name,
            "target": d.assignment.target.name,
            "partitions": [
                {
                    "number": p.number,
                    "role": p.role,
                    "fs_type": p.fs_type,
                    "mount": p.mount,
                    "old_bytes": p.old_bytes,
                    "new_bytes": p.new_bytes,
                    "start_sector": p.start_sector,
                    "size_sectors": p.size_sectors,
                    "sector": p.sector,
                    "how": p.how,
                }
                for p in d.partitions
            ],
        }
        for d in plan.disks
    ]
    vgs = [
        {
            "name": vg.name,
            "extent_bytes": vg.extent_bytes,
            "old_extents": vg.old_extents,
            "new_extents": vg.new_extents,
            "lvs": [
                {"name": lv.name, "fixed": lv.fixed, "old_bytes": lv.old_bytes, "new_bytes": lv.new_bytes,
                 "extents": lv.new_extents}
                for lv in vg.lvs
            ],
        }
        for vg in plan.vgs
    ]
    arrays = [
        {"name": md.name, "level": md.level, "members": [list(m) for m in md.members],
         "old_bytes": md.old_bytes, "new_bytes": md.new_bytes}
        for md in plan.arrays
    ]
    reasons = [f"{a.source.name} -> {a.target.name}: {a.reason}" for a in (d.assignment for d in plan.disks)]
    unused = [{"target": t.name, "bytes": t.size_bytes, "why": why} for t, why in plan.unused]
    return {
        "mapping": mapping,
        "plan": {"disks": disks, "vgs": vgs, "arrays": arrays},
        "reasons": reasons,
        "unused": unused,
        "in_place": plan.in_place,
    }


def refusal_dict(refused: RestoreRefused) -> dict[str, object]:
    return {"refused": refused.message, "hint": refused.hint}
