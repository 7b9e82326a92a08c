"""How big everything becomes on the target disks (pure): partitions, LVM logical volumes and
md RAID1 arrays, and the whole plan (`plan_restore`), refused before any write when it cannot
be made.

Partitions, per disk:
- the first partition starts where it started (rounded up to 1 MiB), the others follow it
  packed in their saved order (gaps between them are not kept); every start and size is a
  multiple of 1 MiB, and the last one ends before GPT's backup header and entries;
- fixed partitions (BIOS boot, ESP, /boot, swap) keep their size (rounded up to 1 MiB);
- the others scale with the room the disk leaves after the fixed ones: new = old * target
  room / source room, rounded down to 1 MiB (up when the disk grows, if that still fits), so
  space left free on the saved disk stays proportionally free;
- a data partition may only get smaller (by 1 MiB or more: less is alignment) when its
  filesystem's used bytes fit with headroom; lvm-pv and md-member partitions are checked
  through their volume group or array.
LVM: fixed LVs (swap) keep their extents. In a VG that grows the others scale with the room
after the fixed ones; in one that shrinks they keep their size while the room still holds
them (the free extents go first), else share all of it by their old sizes; rounded down to
whole extents. Thin pools, snapshots, caches, raid or mirror segments refuse.
md RAID1: each member partition is sized as its disk allows; the array gets the smallest
member's size and its filesystem must fit.
`noresize` (MondoRescue's word, `resize=False`): every partition keeps its saved size (rounded
up to 1 MiB) and the rest of a larger disk stays free; a disk that cannot hold them all is
refused, never shrunk. Volume groups and arrays then keep their sizes too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.disk_map import DiskAssignment, exclusion_of, map_disks
from initrd_composer.boot.restore.model import (
    FIXED_ROLES,
    MIB,
    RESTORABLE_SEGTYPES,
    MdArray,
    Role,
    SourceDisk,
    SourcePartition,
    TargetDisk,
    VolumeGroup,
    human_bytes,
)

ALIGN_BYTES = MIB
# A shrunk filesystem needs room beyond its used bytes: 10% for what the file system keeps for
# itself as it fills (metadata, journal growth, reserved blocks, fragmentation when the data is
# written back) and 64 MiB for a fresh file system's fixed overhead (journal, inode tables) on
# a small one. Used bytes are what `df` said at capture time.
HEADROOM_PERCENT = 10
HEADROOM_FIXED_BYTES = 64 * MIB
# GPT's backup: a header sector plus 16 KiB of partition entries at the disk's end
# (33 sectors of 512 bytes, 5 of 4096).
GPT_ENTRIES_BYTES = 16384
# pvcreate's default first extent starts 1 MiB into the PV (label and metadata area before it).
PV_METADATA_BYTES = MIB


def needed_bytes(used_bytes: int) -> int:
    """The smallest size a filesystem with `used_bytes` in use may be given."""
    return -(-used_bytes * (100 + HEADROOM_PERCENT) // 100) + HEADROOM_FIXED_BYTES


def align_up(n: int, to: int = ALIGN_BYTES) -> int:
    return -(-n // to) * to


def align_down(n: int, to: int = ALIGN_BYTES) -> int:
    return n // to * to


def tail_bytes(table: str, sector: int) -> int:
    """What the partition table keeps at the disk's end: GPT's backup header and entries."""
    if table != "gpt":
        return 0
    return (1 + -(-GPT_ENTRIES_BYTES // sector)) * sector


def partition_name(disk: str, number: int) -> str:
    """sda + 2 -> sda2; nvme0n1 + 2 -> nvme0n1p2 (the kernel's rule for names ending in a digit)."""
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"


@dataclass(frozen=True)
class PartitionPlan:
    number: int
    role: Role
    fs_type: str
    mount: str
    old_bytes: int
    start_sector: int  # on the target, in its logical sectors
    size_sectors: int
    sector: int  # the target's logical sector size
    how: str  # "fixed", "scaled", "same"

    @property
    def new_bytes(self) -> int:
        return self.size_sectors * self.sector

    @property
    def start_bytes(self) -> int:
        return self.start_sector * self.sector


@dataclass(frozen=True)
class DiskPlan:
    assignment: DiskAssignment
    partitions: tuple[PartitionPlan, ...]

    def partition(self, number: int) -> PartitionPlan | None:
        return next((p for p in self.partitions if p.number == number), None)


@dataclass(frozen=True)
class LvPlan:
    name: str
    fixed: bool
    old_bytes: int
    new_extents: int
    extent_bytes: int

    @property
    def new_bytes(self) -> int:
        return self.new_extents * self.extent_bytes


@dataclass(frozen=True)
class VgPlan:
    name: str
    extent_bytes: int
    old_extents: int  # what the PVs hold (1 MiB each for metadata)
    new_extents: int
    lvs: tuple[LvPlan, ...]


@dataclass(frozen=True)
class MdPlan:
    name: str
    level: str
    members: tuple[tuple[str, int], ...]  # (target disk, partition number)
    old_bytes: int
    new_bytes: int


@dataclass(frozen=True)
class RestorePlan:
    disks: tuple[DiskPlan, ...]
    vgs: tuple[VgPlan, ...] = ()
    arrays: tuple[MdPlan, ...] = ()
    # The target disks left alone and why, by name: shown so that the person at the console
    # sees the restore set's disk is not among those written.
    unused: tuple[tuple[TargetDisk, str], ...] = ()
    in_place: bool = False  # nopart: into the disks' own partitions, no partition table written


def plan_restore(
    sources: Sequence[SourceDisk],
    targets: Iterable[TargetDisk],
    vgs: Sequence[VolumeGroup] = (),
    arrays: Sequence[MdArray] = (),
    excluded: Iterable[str] = (),
    *,
    resize: bool = True,
    pinned: Mapping[str, str] | None = None,
    in_place: bool = False,
) -> RestorePlan:
    """Map, size and check everything, or raise RestoreRefused; nothing here writes.
    `resize=False`: the saved partition sizes, kept (`noresize`); `pinned`: target disks chosen
    at the console, by source disk name (disk_map); `in_place`: into the partitions the disks
    have (`nopart`, in_place.py)."""
    refuse_unrestorable(sources, vgs, arrays)
    target_list = sorted(targets, key=lambda t: t.name)
    excluded = frozenset(excluded)
    if in_place:
        from initrd_composer.boot.restore.in_place import size_disk_in_place  # noqa: PLC0415

        with_parts = [t for t in target_list if t.partitions]
        anywhere = dict.fromkeys((d.name for d in sources), 0)  # the partitions decide, one by one
        assignments = map_disks(sources, with_parts, excluded, anywhere, pinned)
        plan = _with_volumes(tuple(size_disk_in_place(a) for a in assignments), vgs, arrays)
    elif not resize:
        plan = _plan_kept(sources, target_list, vgs, arrays, excluded, pinned=pinned)
    else:
        plan = _plan(sources, target_list, vgs, arrays, excluded, pinned=pinned)
    used = {d.assignment.target.name for d in plan.disks}
    unused = tuple((t, exclusion_of(t, excluded) or "not needed") for t in target_list if t.name not in used)
    return RestorePlan(plan.disks, plan.vgs, plan.arrays, unused, in_place)


def _plan_kept(sources: Sequence[SourceDisk], target_list: list[TargetDisk], vgs: Sequence[VolumeGroup],
               arrays: Sequence[MdArray], excluded: frozenset[str], *,
               pinned: Mapping[str, str] | None) -> RestorePlan:  # fmt: skip
    kept = {d.name: span_bytes(d) for d in sources}
    try:
        assignments = map_disks(sources, target_list, excluded, kept, pinned)
    except RestoreRefused as refused:
        raise RestoreRefused(f"{refused.message} (noresize: its partitions at their saved sizes)",
                             f"boot without noresize to let the restore fit them\n{refused.hint}") from None
    return _with_volumes(tuple(size_disk(a, resize=False) for a in assignments), vgs, arrays)


def _plan(sources: Sequence[SourceDisk], target_list: list[TargetDisk], vgs: Sequence[VolumeGroup],
          arrays: Sequence[MdArray], excluded: frozenset[str], *,
          pinned: Mapping[str, str] | None) -> RestorePlan:  # fmt: skip
    minimum = {d.name: minimum_disk_bytes(d, vgs, arrays) for d in sources}
    try:
        return _sized(map_disks(sources, target_list, excluded, minimum, pinned), vgs, arrays)
    except RestoreRefused as refused:
        if not refused.message.startswith("cannot place"):
            raise
        unplaced = refused
    # The minimum is an estimate: the exact sizing on the disks a shrink would pick decides, and
    # when it refuses too, the refusal names the filesystem that does not fit.
    try:
        anywhere = map_disks(sources, target_list, excluded, dict.fromkeys(minimum, 0), pinned)
    except RestoreRefused:
        raise unplaced from None
    try:
        return _sized(anywhere, vgs, arrays)
    except RestoreRefused as refused:
        raise RestoreRefused(f"{unplaced.message}: {refused.message}", unplaced.hint) from None


def _sized(assignments: Sequence[DiskAssignment], vgs: Sequence[VolumeGroup],
           arrays: Sequence[MdArray]) -> RestorePlan:
    return _with_volumes(tuple(size_disk(a) for a in assignments), vgs, arrays)


def _with_volumes(disks: tuple[DiskPlan, ...], vgs: Sequence[VolumeGroup],
                  arrays: Sequence[MdArray]) -> RestorePlan:
    by_source = {d.assignment.source.name: d for d in disks}
    # A PV or md member the saved layout has no VG or array for: what it holds is not known,
    # so it may not shrink.
    known = {pv for vg in vgs for pv in vg.pvs} | {m for md in arrays for m in md.members}
    for d in disks:
        for p in d.partitions:
            if p.role in ("lvm-pv", "md-member") and (d.assignment.source.name, p.number) not in known:
                label = f"{p.role} {partition_name(d.assignment.target.name, p.number)}"
                check_fits(f"{label} (in no saved volume group or array)", None, p.old_bytes, p.new_bytes)
    vg_plans = tuple(size_vg(vg, by_source) for vg in vgs)
    md_plans = tuple(size_array(md, by_source) for md in arrays)
    return RestorePlan(disks, vg_plans, md_plans)


def refuse_unrestorable(sources: Sequence[SourceDisk], vgs: Sequence[VolumeGroup],
                        arrays: Sequence[MdArray]) -> None:
    """What the restore cannot recreate, found before anything is mapped."""
    for vg in vgs:
        for lv in vg.lvs:
            if lv.segtype not in RESTORABLE_SEGTYPES:
                raise RestoreRefused(
                    f"logical volume {vg.name}/{lv.name} has segment type {lv.segtype}, "
                    "which the restore cannot recreate (only linear and striped volumes)",
                    "restore this machine by hand from the rescue shell, or convert the volume "
                    "to a linear one and take a new backup",
                )
    for md in arrays:
        if md.level != "raid1":
            raise RestoreRefused(
                f"md array {md.name} is {md.level}; the restore plans only raid1 arrays so far",
                "restore this machine by hand from the rescue shell",
            )
    for disk in sources:
        for part in disk.partitions:
            if part.is_extended:
                raise RestoreRefused(
                    f"{partition_name(disk.name, part.number)} is an MBR extended partition; "
                    "the restore does not plan logical partitions yet",
                    "restore this machine by hand from the rescue shell",
                )


def _scalable(parts: Iterable[SourcePartition]) -> list[SourcePartition]:
    return [p for p in parts if p.role not in FIXED_ROLES]


def _layout(disk: SourceDisk) -> tuple[list[SourcePartition], int, int, int]:
    """The partitions in disk order, the first one's start, the fixed ones' bytes and the room
    the scaled ones share on the saved disk (all in bytes)."""
    parts = sorted(disk.partitions, key=lambda p: p.start_sector)
    if not parts:
        return [], 0, 0, 0
    first = align_up(parts[0].start_sector * disk.logical_sector)
    fixed = sum(align_up(p.size_sectors * disk.logical_sector) for p in parts if p.role in FIXED_ROLES)
    end = align_down(disk.size_bytes - tail_bytes(disk.table, disk.logical_sector))
    return parts, first, fixed, end - first - fixed


def _partition_minimum(disk: SourceDisk, part: SourcePartition, vgs: Sequence[VolumeGroup],
                       arrays: Sequence[MdArray]) -> int:
    """An estimate of the smallest a scaled partition may become (sizing checks it exactly)."""
    old = part.size_sectors * disk.logical_sector
    key = (disk.name, part.number)
    if part.role == "lvm-pv":
        vg = next((v for v in vgs if key in v.pvs), None)
        if vg is None:
            return old
        lv_min = sum(
            lv.size_bytes if lv.is_fixed or lv.used_bytes is None else needed_bytes(lv.used_bytes)
            for lv in vg.lvs
        )
        # This PV shrinks by the VG's ratio: its LVs' minimum over their size, plus the
        # metadata area and an extent per LV for rounding down.
        lv_total = sum(lv.size_bytes for lv in vg.lvs) or 1
        slack = vg.extent_bytes * (len(vg.lvs) + 1) + PV_METADATA_BYTES
        return min(old, lv_min * old // lv_total + slack)
    if part.role == "md-member":
        md = next((m for m in arrays if key in m.members), None)
        if md is None or md.used_bytes is None:
            return old
        return min(old, needed_bytes(md.used_bytes))
    if part.used_bytes is None:
        return old
    return min(old, needed_bytes(part.used_bytes))


def minimum_disk_bytes(disk: SourceDisk, vgs: Sequence[VolumeGroup] = (),
                       arrays: Sequence[MdArray] = ()) -> int:
    """The smallest target disk this one may go to. All scaled partitions shrink by one ratio,
    so the one that can shrink least sets it; 1 MiB each for rounding down."""
    parts, first, fixed, room = _layout(disk)
    if not parts:
        return 0
    need_room = 0
    for part in _scalable(parts):
        old = part.size_sectors * disk.logical_sector
        low = _partition_minimum(disk, part, vgs, arrays) + ALIGN_BYTES
        if old > 0 and room > 0:
            need_room = max(need_room, -(-low * room // old))
    need_room = min(need_room, room) if room > 0 else need_room
    return first + fixed + need_room + ALIGN_BYTES + tail_bytes(disk.table, disk.logical_sector)


def span_bytes(disk: SourceDisk) -> int:
    """The smallest disk that holds this one's partitions at their saved sizes (noresize)."""
    parts, first, _fixed, _room = _layout(disk)
    kept = sum(align_up(p.size_sectors * disk.logical_sector) for p in parts)
    return first + kept + tail_bytes(disk.table, disk.logical_sector) if parts else 0


def fs_label(mount: str, fs_type: str, where: str) -> str:
    return f"filesystem {mount or '(not mounted)'} ({fs_type or 'unknown type'} on {where})"


def check_fits(label: str, used: int | None, old: int, new: int) -> None:
    """Refuse a filesystem that would shrink below its used bytes plus headroom. Less than
    1 MiB off is the 1 MiB alignment, not a shrink: a partition that ended on the saved disk's
    last usable sector loses that much even on a disk of the same size, and refusing a
    same-size restore for it would be wrong."""
    if new > old - ALIGN_BYTES:
        return
    if used is None:
        raise RestoreRefused(
            f"{label} would shrink from {human_bytes(old)} to {human_bytes(new)} ({new} bytes), "
            "and its used bytes are not known",
            "use a target disk at least as large as the saved one",
        )
    if needed_bytes(used) > new:
        raise RestoreRefused(
            f"{label} uses {human_bytes(used)} ({used} bytes) and would get {human_bytes(new)} "
            f"({new} bytes); it needs {human_bytes(needed_bytes(used))} with headroom",
            "use a larger target disk, or free space on the saved machine and take a new backup",
        )


def size_disk(assignment: DiskAssignment, *, resize: bool = True) -> DiskPlan:
    src, target = assignment.source, assignment.target
    parts, first, fixed, source_room = _layout(src)
    if not parts:
        return DiskPlan(assignment, ())
    sector = target.logical_sector
    end = align_down(target.size_bytes - tail_bytes(src.table, sector))
    if not resize:
        return _kept_sizes(assignment, parts, first, end)
    room = end - first - fixed
    if room < 0 or (room == 0 and _scalable(parts)):
        raise RestoreRefused(
            f"target disk {target.name} ({human_bytes(target.size_bytes)}) cannot hold source disk "
            f"{src.name}'s fixed partitions ({human_bytes(fixed)} from {human_bytes(first)} on)",
            "use a larger target disk",
        )
    sizes = _scaled_sizes(src, parts, room, source_room, grow=room >= source_room)
    if first + sum(sizes) > end:
        sizes = _scaled_sizes(src, parts, room, source_room, grow=False)
    out: list[PartitionPlan] = []
    at = first
    for part, size in zip(parts, sizes, strict=True):
        old = part.size_sectors * src.logical_sector
        where = partition_name(target.name, part.number)
        if size < ALIGN_BYTES:
            raise RestoreRefused(
                f"{partition_name(src.name, part.number)} ({human_bytes(old)}) would get "
                f"{human_bytes(size)} on {target.name}",
                "use a larger target disk",
            )
        if part.role not in FIXED_ROLES | {"lvm-pv", "md-member"}:
            check_fits(fs_label(part.mount, part.fs_type, where), part.used_bytes, old, size)
        how = "fixed" if part.role in FIXED_ROLES else _how(old, size)
        out.append(PartitionPlan(part.number, part.role, part.fs_type, part.mount, old,
                                 at // sector, size // sector, sector, how))
        at += size
    return DiskPlan(assignment, tuple(out))


def _kept_sizes(assignment: DiskAssignment, parts: list[SourcePartition], first: int, end: int) -> DiskPlan:
    """noresize: each partition at its saved size, packed from the first one's start."""
    src, target = assignment.source, assignment.target
    sector = target.logical_sector
    sizes = [align_up(p.size_sectors * src.logical_sector) for p in parts]
    if first + sum(sizes) > end:
        raise RestoreRefused(
            f"noresize: source disk {src.name}'s partitions need {human_bytes(first + sum(sizes))} "
            f"at their saved sizes; target disk {target.name} has {human_bytes(target.size_bytes)}",
            "boot without noresize to let the restore fit them to the disk, or use a larger disk",
        )
    out: list[PartitionPlan] = []
    at = first
    for part, size in zip(parts, sizes, strict=True):
        old = part.size_sectors * src.logical_sector
        how = "fixed" if part.role in FIXED_ROLES else _how(old, size)
        out.append(PartitionPlan(part.number, part.role, part.fs_type, part.mount, old,
                                 at // sector, size // sector, sector, how))  # fmt: skip
        at += size
    return DiskPlan(assignment, tuple(out))


def _how(old: int, new: int) -> str:
    if new == old:
        return "same"
    return "aligned" if abs(new - old) < ALIGN_BYTES else "scaled"


def _scaled_sizes(src: SourceDisk, parts: list[SourcePartition], room: int, source_room: int,
                  grow: bool) -> list[int]:
    sizes = []
    for part in parts:
        old = part.size_sectors * src.logical_sector
        if part.role in FIXED_ROLES:
            sizes.append(align_up(old))
            continue
        scaled = old * room // source_room if source_room > 0 else old
        sizes.append(align_up(scaled) if grow else align_down(scaled))
    return sizes


def _pv_plans(vg: VolumeGroup, disks: dict[str, DiskPlan]) -> list[tuple[int, int]]:
    """(old bytes, new bytes) of each PV partition."""
    out = []
    for disk_name, number in vg.pvs:
        plan = disks.get(disk_name)
        new = plan.partition(number) if plan else None
        if plan is None or new is None:
            raise RestoreRefused(
                f"volume group {vg.name}'s physical volume {partition_name(disk_name, number)} "
                "is not among the saved disks' partitions",
                "the saved layout is incomplete; take a new backup",
            )
        out.append((new.old_bytes, new.new_bytes))
    return out


def size_vg(vg: VolumeGroup, disks: dict[str, DiskPlan]) -> VgPlan:
    ext = vg.extent_bytes

    def extents(pv_bytes: int) -> int:
        return max(0, (pv_bytes - PV_METADATA_BYTES) // ext)

    pvs = _pv_plans(vg, disks)
    old_total = sum(extents(old) for old, _new in pvs)
    new_total = sum(extents(new) for _old, new in pvs)
    old_ext = {lv.name: -(-lv.size_bytes // ext) for lv in vg.lvs}
    fixed_ext = sum(old_ext[lv.name] for lv in vg.lvs if lv.is_fixed)
    scaled_old = sum(old_ext[lv.name] for lv in vg.lvs if not lv.is_fixed)
    # The captured PVs may hold a little more than 1 MiB of metadata in front: never let the
    # LVs' own total exceed the room they are scaled from.
    old_room = max(old_total - fixed_ext, scaled_old)
    new_room = new_total - fixed_ext
    if new_room < 0 or (new_room == 0 and scaled_old):
        raise RestoreRefused(
            f"volume group {vg.name} gets {new_total} extents of {human_bytes(ext)}, fewer than its "
            f"fixed-size volumes' {fixed_ext}",
            "use larger target disks",
        )
    lvs = []
    for lv in vg.lvs:
        old = old_ext[lv.name]
        new = old if lv.is_fixed else _lv_extents(old, old_room, new_room, scaled_old)
        if not lv.is_fixed:
            label = fs_label(lv.mount, lv.fs_type, f"{vg.name}/{lv.name}")
            check_fits(label, lv.used_bytes, lv.size_bytes, new * ext)
        lvs.append(LvPlan(lv.name, lv.is_fixed, lv.size_bytes, new, ext))
    return VgPlan(vg.name, ext, old_total, new_total, tuple(lvs))


def _lv_extents(old: int, old_room: int, new_room: int, scaled_old: int) -> int:
    """A growing VG: the LV keeps its share of the room (free extents stay proportionally
    free). A shrinking one: the LVs keep their size while the room still holds them all (the
    free extents absorb it), else they share the whole room by their old sizes. Rounded down."""
    if old_room == 0 or scaled_old == 0:
        return old
    if new_room >= old_room:
        return old * new_room // old_room
    if new_room >= scaled_old:
        return old
    return old * new_room // scaled_old


def size_array(md: MdArray, disks: dict[str, DiskPlan]) -> MdPlan:
    olds, news, members = [], [], []
    for disk_name, number in md.members:
        plan = disks.get(disk_name)
        part = plan.partition(number) if plan else None
        if plan is None or part is None:
            raise RestoreRefused(
                f"md array {md.name}'s member {partition_name(disk_name, number)} is not among "
                "the saved disks' partitions",
                "the saved layout is incomplete; take a new backup",
            )
        olds.append(part.old_bytes)
        news.append(part.new_bytes)
        members.append((plan.assignment.target.name, number))
    if not members:
        raise RestoreRefused(f"md array {md.name} has no members in the saved layout",
                             "the saved layout is incomplete; take a new backup")
    # RAID1 mirrors: the array is as large as its smallest member (the member's md superblock
    # and data offset come out of the filesystem's headroom).
    old, new = min(olds), min(news)
    check_fits(fs_label(md.mount, md.fs_type, md.name), md.used_bytes, old, new)
    return MdPlan(md.name, md.level, tuple(members), old, new)
