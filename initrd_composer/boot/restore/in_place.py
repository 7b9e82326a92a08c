"""`nopart` (MondoRescue's word): restore into the partitions the target disks have already,
without writing a partition table (pure).

Each saved partition goes into the target partition of the same number, at that partition's
start and size. What the disk has besides them is left as it is. A missing partition, a BIOS
boot or EFI system partition smaller than the saved one (GRUB's core image, the firmware's
files), or a filesystem that does not fit with headroom, is refused before any write; PVs and
md members are checked through their volume group or array, as for a new table. The
partitions keep their own PARTUUIDs: the saved ones are not written.
"""

from __future__ import annotations

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.disk_map import DiskAssignment
from initrd_composer.boot.restore.model import SourcePartition, human_bytes
from initrd_composer.boot.restore.sizing import DiskPlan, PartitionPlan, check_fits, fs_label, partition_name

IN_PLACE = "in place"  # PartitionPlan.how
# Their content is a boot loader's or the firmware's, copied or installed whole.
WHOLE_ROLES = frozenset({"bios-boot", "esp"})
HINT = "partition the disk as the saved one was (the same numbers), or boot without nopart"


def _what(part: SourcePartition) -> str:
    return " ".join(x for x in (part.role, part.fs_type, part.mount) if x and x != "data") or "data"


def size_disk_in_place(assignment: DiskAssignment) -> DiskPlan:
    src, target = assignment.source, assignment.target
    sector = target.logical_sector
    out: list[PartitionPlan] = []
    for part in sorted(src.partitions, key=lambda p: p.start_sector):
        if part.is_extended:
            continue  # a container: its logical partitions are checked one by one
        old = part.size_sectors * src.logical_sector
        saved = f"{partition_name(src.name, part.number)} ({_what(part)}, {human_bytes(old)})"
        there = target.partition(part.number)
        if there is None:
            raise RestoreRefused(f"nopart: target disk {target.name} has no partition {part.number} "
                                 f"for {saved}", HINT)  # fmt: skip
        where = partition_name(target.name, part.number)
        if part.role in WHOLE_ROLES and there.size_bytes < old:
            raise RestoreRefused(
                f"nopart: {where} ({human_bytes(there.size_bytes)}) is smaller than {saved}", HINT
            )
        if part.role not in WHOLE_ROLES | {"swap", "lvm-pv", "md-member"}:
            check_fits(fs_label(part.mount, part.fs_type, where), part.used_bytes, old, there.size_bytes)
        out.append(PartitionPlan(part.number, part.role, part.fs_type, part.mount, old,
                                 there.start_bytes // sector, there.size_bytes // sector, sector, IN_PLACE))
    return DiskPlan(assignment, tuple(out))
