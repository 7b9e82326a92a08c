"""The saved partition table as an sfdisk script for its target disk (pure): sfdisk(8)'s
"Input format" with the plan's starts and sizes and everything else as saved (table id, type
GUIDs or MBR ids, PARTUUIDs, names, GPT attribute bits, the MBR boot flag).

What util-linux 2.38's sfdisk does with a script, checked against it in the tests:
- `/dev/X3 : start=...` keeps partition number 3 (the number is the path's trailing digits,
  the path itself is not used), so gaps in the saved numbering survive;
- a quoted value ends at the next `"`: `\\"` does not escape it, but `\\xNN` is decoded, so
  names are written as `sfdisk --dump` writes them (`"`, `\\`, `` ` ``, `$` and every byte
  outside printable ASCII as `\\xNN` of its UTF-8 bytes);
- a `sector-size:` that differs from the device's makes sfdisk rescale every start and size
  to the device's sectors, so it must be the target's own (the plan's sectors are).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.sizing import DiskPlan, PartitionPlan, partition_name

_HINT = "the saved layout does not match the plan; take a new backup or restore by hand"
# An MBR entry holds 32-bit sector numbers: nothing may end past 2^32 sectors.
MBR_LIMIT_SECTORS = 1 << 32
_UNQUOTED = frozenset(range(0x20, 0x7F)) - {0x22, 0x24, 0x5C, 0x60}


def quote(value: str) -> str:
    """A script string in double quotes, escaped as sfdisk's own dump escapes it."""
    return '"' + "".join(chr(b) if b in _UNQUOTED else f"\\x{b:02x}" for b in value.encode()) + '"'


def _saved_partitions(layout_disk: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    table = layout_disk.get("partition_table")
    if not table:
        raise RestoreRefused(f"saved disk {layout_disk.get('name')} has no partition table", _HINT)
    return {int(p["number"]): p for p in table["partitions"]}


def _first_lba(table: Mapping[str, Any], disk_plan: DiskPlan) -> int | None:
    """The saved first usable LBA when it still means the same bytes and precedes the first
    partition; else None (sfdisk's default)."""
    first = table.get("first_lba")
    sector = disk_plan.assignment.target.logical_sector
    if first is None or int(table.get("sector_size") or 512) != sector:
        return None
    starts = [p.start_sector for p in disk_plan.partitions]
    return int(first) if not starts or int(first) <= min(starts) else None


def _line(disk: str, label: str, part: PartitionPlan, saved: Mapping[str, Any]) -> str:
    fields = [f"start={part.start_sector}", f"size={part.size_sectors}", f"type={saved['type']}"]
    if label == "gpt":
        if saved.get("uuid"):
            fields.append(f"uuid={saved['uuid']}")
        if saved.get("name"):
            fields.append(f"name={quote(str(saved['name']))}")
        if saved.get("attrs"):
            fields.append(f"attrs={quote(str(saved['attrs']))}")
    elif saved.get("bootable"):
        fields.append("bootable")
    return f"/dev/{partition_name(disk, part.number)} : " + ", ".join(fields)


def _check_dos(disk: str, part: PartitionPlan) -> None:
    if part.number > 4:
        raise RestoreRefused(f"{partition_name(disk, part.number)} is an MBR logical partition; "
                             "the restore writes only primary ones", _HINT)  # fmt: skip
    if part.start_sector + part.size_sectors > MBR_LIMIT_SECTORS:
        raise RestoreRefused(
            f"{partition_name(disk, part.number)} would end at sector "
            f"{part.start_sector + part.size_sectors}, past an MBR table's 2^32 sectors",
            "restore onto a smaller disk, or convert the saved machine to GPT and take a new backup",
        )


def sfdisk_script(disk_plan: DiskPlan, layout_disk: Mapping[str, Any]) -> str:
    """The script that recreates `layout_disk`'s table (its layout.json `disks[]` record) on
    the plan's target disk; partitions in number order, each with its saved number."""
    table = layout_disk.get("partition_table") or {}
    saved = _saved_partitions(layout_disk)
    label = str(table["label"])
    if label not in ("gpt", "dos"):
        raise RestoreRefused(f"saved disk {layout_disk.get('name')}: table {label!r} is neither gpt nor dos",
                             _HINT)  # fmt: skip
    disk = disk_plan.assignment.target.name
    sector = disk_plan.assignment.target.logical_sector
    lines = [f"label: {label}"]
    if table.get("id"):
        lines.append(f"label-id: {table['id']}")
    lines += ["unit: sectors", f"sector-size: {sector}"]
    first = _first_lba(table, disk_plan) if label == "gpt" else None
    if first is not None:
        lines.append(f"first-lba: {first}")
    lines.append("")
    for part in sorted(disk_plan.partitions, key=lambda p: p.number):
        if part.sector != sector:
            raise RestoreRefused(f"{partition_name(disk, part.number)} is planned in {part.sector}-byte "
                                 f"sectors, the disk has {sector}", _HINT)  # fmt: skip
        if label == "dos":
            _check_dos(disk, part)
        record = saved.get(part.number)
        if record is None:
            where = partition_name(disk, part.number)
            raise RestoreRefused(f"{where}: the saved table of {layout_disk.get('name')} has no "
                                 f"partition {part.number}", _HINT)  # fmt: skip
        lines.append(_line(disk, label, part, record))
    return "\n".join(lines) + "\n"


def sfdisk_argv(device: str) -> list[str]:
    """sfdisk reading the script on stdin: old table signatures and the filesystem signatures
    at each new partition's start are wiped (a stale one would make blkid and mkfs see a
    filesystem that is not there); the kernel is told by the caller (partx) afterwards."""
    return ["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "always", "--wipe-partitions", "always",
            device]  # fmt: skip
