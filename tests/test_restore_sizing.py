"""The restore's sizes (boot/restore/sizing.py): fixed partitions keep theirs, the others scale
with the target disk, aligned to 1 MiB and clear of GPT's backup; shrinking only as far as the
used bytes allow; LVM volumes scale with their PVs in whole extents; RAID1 arrays get their
smallest member's size; what cannot be recreated refuses the whole plan."""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.disk_map import DiskAssignment
from initrd_composer.boot.restore.model import (
    GIB,
    MIB,
    LogicalVolume,
    MdArray,
    SourceDisk,
    SourcePartition,
    TargetDisk,
    VolumeGroup,
)
from initrd_composer.boot.restore.sizing import (
    DiskPlan,
    RestorePlan,
    minimum_disk_bytes,
    needed_bytes,
    plan_restore,
    size_disk,
    tail_bytes,
)

BIOS = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
RAID = "A19D880F-05FC-4D3B-A006-743F0F84911E"
S = 512  # the source disks' logical sector
M = MIB // S  # sectors per MiB


def parts(*spec: tuple[str, int, str, str, int | None], first_mib: int = 1) -> tuple[SourcePartition, ...]:
    """(type, MiB, mount, fs, used) each, packed from `first_mib` on."""
    out, at = [], first_mib * M
    for number, (type_id, mib, mount, fs, used) in enumerate(spec, 1):
        out.append(SourcePartition(number, at, mib * M, type_id, mount, fs, used))
        at += mib * M
    return tuple(out)


# A BIOS+UEFI disk of 20 GiB: bios-boot, ESP, /boot, swap, then / with 3 GiB used; 4.5 GiB free.
STANDARD = parts(
    (BIOS, 1, "", "", None),
    (ESP, 512, "/boot/efi", "vfat", 30 * MIB),
    (LINUX, 1024, "/boot", "ext4", 200 * MIB),
    (SWAP, 2048, "swap", "swap", None),
    (LINUX, 12 * 1024, "/", "ext4", 3 * GIB),
)


def disk(name: str = "sda", gib: float = 20, partitions: tuple[SourcePartition, ...] = STANDARD,
         table: Literal["gpt", "dos"] = "gpt") -> SourceDisk:
    return SourceDisk(name, int(gib * GIB), S, serial=f"SER-{name}", table=table,
                      partitions=partitions, transport="virtio")


def target(name: str = "nvme0n1", gib: float = 30, sector: int = 512) -> TargetDisk:
    return TargetDisk(name, int(gib * GIB), sector, transport="nvme")


def sized(src: SourceDisk, tgt: TargetDisk) -> DiskPlan:
    return size_disk(DiskAssignment(src, tgt, "by size"))


def sizes(plan: DiskPlan) -> list[int]:
    return [p.new_bytes for p in plan.partitions]


def test_fixed_partitions_keep_their_size_and_the_first_start() -> None:
    for gib in (12, 20, 30, 400):
        plan = sized(disk(), target(gib=gib))
        assert sizes(plan)[:4] == [MIB, 512 * MIB, GIB, 2 * GIB]
        assert [p.how for p in plan.partitions[:4]] == ["fixed"] * 4
        assert plan.partitions[0].start_bytes == MIB
        assert [p.role for p in plan.partitions] == ["bios-boot", "esp", "boot", "swap", "data"]


def test_same_size_disk_keeps_every_size() -> None:
    plan = sized(disk(), target(gib=20))
    assert sizes(plan) == [p.size_sectors * S for p in STANDARD]
    assert plan.partitions[-1].how == "same"


def test_scale_up_keeps_the_free_share() -> None:
    plan = sized(disk(), target(gib=40))
    end = 20 * GIB - tail_bytes("gpt", 512)
    room_src = end // MIB * MIB - MIB - (MIB + 512 * MIB + 3 * GIB)
    room_tgt = (40 * GIB - tail_bytes("gpt", 512)) // MIB * MIB - MIB - (MIB + 512 * MIB + 3 * GIB)
    expect = -(-(12 * GIB * room_tgt // room_src) // MIB) * MIB
    assert sizes(plan)[-1] == expect
    assert plan.partitions[-1].how == "scaled"
    assert 26 * GIB < expect < 30 * GIB  # / grows about 2.1 times, not to the disk's end


def test_scale_down_when_the_used_bytes_fit() -> None:
    plan = sized(disk(), target(gib=10))
    root = plan.partitions[-1]
    assert root.new_bytes < 12 * GIB and root.new_bytes >= needed_bytes(3 * GIB)
    assert root.new_bytes % MIB == 0


def test_shrink_refused_naming_the_filesystem_its_used_bytes_and_new_size() -> None:
    full = parts((LINUX, 512, "/boot", "ext4", 100 * MIB), (LINUX, 19 * 1024, "/", "ext4", 9 * GIB))
    with pytest.raises(RestoreRefused) as refused:
        sized(disk(partitions=full), target(gib=10))
    message = refused.value.message
    assert message.startswith("filesystem / (ext4 on nvme0n1p2) uses 9.0 GiB (9663676416 bytes) and would")
    assert message.endswith("; it needs 10.0 GiB with headroom")  # 9 GiB * 1.1 + 64 MiB


def test_shrink_refused_when_the_used_bytes_are_not_known() -> None:
    unknown = parts((LINUX, 19 * 1024, "/srv", "xfs", None))
    with pytest.raises(RestoreRefused, match=r"filesystem /srv \(xfs on sdb1\) would shrink .* not known"):
        sized(disk(partitions=unknown), target("sdb", gib=15))


def test_plan_refusal_for_a_too_full_disk_says_which_disk_and_which_filesystem() -> None:
    full = parts((LINUX, 19 * 1024, "/", "ext4", 9 * GIB))
    with pytest.raises(RestoreRefused) as refused:
        plan_restore([disk(partitions=full)], [target("sdb", gib=8)])
    assert refused.value.message.startswith("cannot place source disk sda: no remaining target disk holds")
    assert "filesystem / (ext4 on sdb1) uses 9.0 GiB" in refused.value.message
    assert "sdb (nvme 8.0 GiB): too small" in refused.value.hint


def test_the_minimum_is_the_partition_that_shrinks_least() -> None:
    minimum = minimum_disk_bytes(disk())
    assert 4 * GIB < minimum < 20 * GIB
    assert plan_restore([disk()], [target(gib=minimum / GIB)]).disks[0].partitions[-1].new_bytes >= (
        needed_bytes(3 * GIB)
    )


def to_the_last_usable_sector(partitions: tuple[SourcePartition, ...], gib: int
                              ) -> tuple[SourcePartition, ...]:
    """The last partition as fdisk and parted make it by default: up to GPT's backup entries."""
    *head, last = partitions
    end = gib * GIB // S - 34
    return (*head, SourcePartition(last.number, last.start_sector, end - last.start_sector + 1, last.type_id,
                                   last.mount, last.fs_type, last.used_bytes))


def test_same_size_restore_of_a_disk_filled_to_its_last_sector_is_not_a_shrink() -> None:
    esp = (ESP, 512, "/boot/efi", "vfat", None)
    full = to_the_last_usable_sector(parts(esp, (LINUX, 1, "/", "ext4", None)), 20)
    plan = plan_restore([disk(partitions=full)], [target(gib=20)])
    root, old = plan.disks[0].partitions[1], full[1].size_sectors * S
    assert root.how == "aligned" and old - MIB < root.new_bytes < old
    # The extents start 1 MiB into the PV and are whole MiB: the PV keeps every one of them.
    lvm = to_the_last_usable_sector(parts(esp, (LVM, 1, "", "LVM2_member", None)), 20)
    group = vg(LogicalVolume("root", 19 * GIB - 520 * MIB, mount="/", fs_type="ext4"))
    same = plan_restore([disk(partitions=lvm)], [target(gib=20)], vgs=[group]).vgs[0]
    assert same.new_extents == same.old_extents and same.lvs[0].new_bytes == group.lvs[0].size_bytes


def test_a_shrinking_vg_gives_up_its_free_extents_before_any_lv_shrinks() -> None:
    group = vg(LogicalVolume("root", 6 * GIB, mount="/", fs_type="ext4"))  # 12.5 GiB of the PV free
    plan = plan_restore([disk(partitions=LVM_DISK)], [target(gib=8)], vgs=[group])
    assert plan.vgs[0].lvs[0].new_bytes == 6 * GIB and plan.vgs[0].new_extents < plan.vgs[0].old_extents


def test_4k_target_sectors_and_dos_tables() -> None:
    plan = sized(disk(), target(gib=30, sector=4096))
    assert plan.partitions[0].start_sector == MIB // 4096
    assert all(p.sector == 4096 for p in plan.partitions)
    dos = parts(("83", 512, "/boot", "ext4", 100 * MIB), ("0x82", 1024, "", "swap", None),
                ("83", 8 * 1024, "/", "ext4", GIB))
    plan = sized(disk(partitions=dos, gib=10, table="dos"), target(gib=5))
    assert [p.role for p in plan.partitions] == ["boot", "swap", "data"]
    assert plan.partitions[-1].start_bytes + plan.partitions[-1].new_bytes <= 5 * GIB


def test_extended_partitions_and_other_raid_levels_refused_before_anything() -> None:
    ext = parts(("83", 512, "/", "ext4", None), ("5", 1024, "", "", None))
    with pytest.raises(RestoreRefused, match="sda2 is an MBR extended partition"):
        plan_restore([disk(partitions=ext, table="dos")], [target()])
    with pytest.raises(RestoreRefused, match="md0 is raid5"):
        plan_restore([disk()], [target()], arrays=[MdArray("md0", "raid5", (("sda", 5),))])


# --- LVM --------------------------------------------------------------------------------------

LVM_DISK = parts((ESP, 512, "/boot/efi", "vfat", None), (LVM, 19 * 1024, "", "LVM2_member", None))


def vg(*lvs: LogicalVolume) -> VolumeGroup:
    return VolumeGroup("vg0", 4 * MIB, (("sda", 2),), lvs)


def test_lvm_scales_with_the_pv_in_whole_extents_and_swap_keeps_its_size() -> None:
    group = vg(
        LogicalVolume("swap", 2 * GIB, fs_type="swap"),
        LogicalVolume("root", 10 * GIB, mount="/", fs_type="ext4", used_bytes=2 * GIB),
        LogicalVolume("home", 5 * GIB + 3 * MIB, mount="/home", fs_type="xfs", used_bytes=GIB),
    )
    plan = plan_restore([disk(partitions=LVM_DISK)], [target(gib=40)], vgs=[group])
    (vgp,) = plan.vgs
    pv_new = plan.disks[0].partitions[1].new_bytes
    assert vgp.new_extents == (pv_new - MIB) // (4 * MIB)
    swap, root, home = vgp.lvs
    assert swap.fixed and swap.new_bytes == 2 * GIB
    room_old, room_new = vgp.old_extents - 512, vgp.new_extents - 512
    assert root.new_extents == 2560 * room_new // room_old  # rounded down
    assert home.new_extents == 1281 * room_new // room_old  # 5 GiB + 3 MiB is 1281 extents
    assert sum(lv.new_extents for lv in vgp.lvs) <= vgp.new_extents
    shrunk = plan_restore([disk(partitions=LVM_DISK)], [target(gib=12)], vgs=[group]).vgs[0]
    assert shrunk.lvs[0].new_bytes == 2 * GIB and shrunk.lvs[1].new_bytes < 10 * GIB


def test_a_pv_of_no_saved_vg_may_grow_but_not_shrink() -> None:
    assert plan_restore([disk(partitions=LVM_DISK)], [target(gib=40)]).disks[0].partitions[1].how == "scaled"
    with pytest.raises(RestoreRefused, match=r"lvm-pv nvme0n1p2 \(in no saved volume group or array\) would"):
        plan_restore([disk(partitions=LVM_DISK)], [target(gib=12)])


def test_lvm_shrink_refused_when_an_lv_does_not_fit() -> None:
    group = vg(LogicalVolume("root", 18 * GIB, mount="/", fs_type="ext4", used_bytes=15 * GIB))
    with pytest.raises(RestoreRefused, match=r"filesystem / \(ext4 on vg0/root\) uses 15.0 GiB"):
        plan_restore([disk(partitions=LVM_DISK)], [target(gib=12)], vgs=[group])


@pytest.mark.parametrize("segtype", ["thin-pool", "thin", "snapshot", "cache", "raid1", "mirror"])
def test_unrestorable_lvs_refuse_the_whole_plan(segtype: str) -> None:
    group = vg(LogicalVolume("pool", 10 * GIB, segtype=segtype))
    with pytest.raises(RestoreRefused, match=f"vg0/pool has segment type {segtype}"):
        plan_restore([disk(partitions=LVM_DISK)], [target(gib=40)], vgs=[group])


# --- md RAID1 ---------------------------------------------------------------------------------

RAID_DISK = parts((ESP, 512, "/boot/efi", "vfat", None), (RAID, 15 * 1024, "", "linux_raid_member", None))


def test_raid1_members_on_different_sized_disks() -> None:
    md = MdArray("md0", "raid1", (("sda", 2), ("sdb", 2)), "ext4", "/", 4 * GIB)
    plan = plan_restore(
        [disk("sda", partitions=RAID_DISK), disk("sdb", partitions=RAID_DISK)],
        [target("nvme0n1", gib=40), target("nvme1n1", gib=30)],
        arrays=[md],
    )
    a, b = (d.partitions[1].new_bytes for d in plan.disks)
    assert {d.assignment.target.name for d in plan.disks} == {"nvme0n1", "nvme1n1"}
    assert a != b  # each member as its disk allows
    (mdp,) = plan.arrays
    assert mdp.new_bytes == min(a, b) and mdp.old_bytes == 15 * GIB
    assert set(mdp.members) == {("nvme0n1", 2), ("nvme1n1", 2)}


def test_raid1_refused_when_the_smallest_member_cannot_hold_the_filesystem() -> None:
    md = MdArray("md0", "raid1", (("sda", 2), ("sdb", 2)), "ext4", "/", 12 * GIB)
    with pytest.raises(RestoreRefused, match=r"filesystem / \(ext4 on md0\) uses 12.0 GiB"):
        plan_restore(
            [disk("sda", partitions=RAID_DISK), disk("sdb", partitions=RAID_DISK)],
            [target("nvme0n1", gib=40), target("nvme1n1", gib=12)],
            arrays=[md],
        )


# --- properties -------------------------------------------------------------------------------

KINDS = st.sampled_from([(BIOS, None), (ESP, 20), (SWAP, None), (LINUX, 10), (LINUX, None), (LVM, None)])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(KINDS, st.integers(1, 4000)), min_size=1, max_size=8),
    st.integers(1, 64),
    st.integers(0, 20000),
    st.sampled_from([512, 4096]),
    st.sampled_from(["gpt", "dos"]),
)
def test_partitions_never_overlap_stay_inside_aligned_and_in_order(
    spec: list[tuple[tuple[str, int | None], int]], first_mib: int, target_mib: int, sector: int,
    table: Literal["gpt", "dos"],
) -> None:
    used_parts = tuple(
        (t, mib, "", "", None if pct is None else mib * MIB * pct // 100) for (t, pct), mib in spec
    )
    partitions = parts(*used_parts, first_mib=first_mib)
    src_bytes = (first_mib + sum(mib for _k, mib in spec)) * MIB + 2 * MIB
    source = disk(gib=src_bytes / GIB, partitions=partitions, table=table)
    tgt = target(gib=max(MIB, src_bytes + (target_mib - 10000) * MIB) / GIB, sector=sector)
    try:
        plan = plan_restore([source], [tgt])
    except RestoreRefused:
        assert tgt.size_bytes < source.size_bytes  # only ever a shrink is refused
        return
    assert isinstance(plan, RestorePlan)
    (dp,) = plan.disks
    assert [p.number for p in dp.partitions] == [p.number for p in partitions]
    assert dp.partitions[0].start_bytes == first_mib * MIB
    at = 0
    for p in dp.partitions:
        assert p.start_bytes % MIB == 0 and p.new_bytes % MIB == 0 and p.new_bytes > 0
        assert p.start_bytes >= at
        at = p.start_bytes + p.new_bytes
    assert at <= tgt.size_bytes - tail_bytes(table, sector)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(KINDS.filter(lambda k: k[0] != LVM), st.integers(1, 4000)), min_size=1, max_size=8),
    st.integers(1, 64),
    st.sampled_from([0, 1, 4096, MIB - 1]),
    st.sampled_from([512, 4096]),
)
def test_a_target_of_the_minimum_size_is_never_refused(
    spec: list[tuple[tuple[str, int | None], int]], first_mib: int, extra: int, sector: int
) -> None:
    """What the mapping uses as a disk's minimum is enough for the exact sizing."""
    used_parts = tuple(
        (t, mib, "", "", None if pct is None else mib * MIB * pct // 100) for (t, pct), mib in spec
    )
    source = disk(gib=(first_mib + sum(m for _k, m in spec) + 2) * MIB / GIB,
                  partitions=parts(*used_parts, first_mib=first_mib))
    minimum = minimum_disk_bytes(source)
    plan_restore([source], [TargetDisk("sdb", minimum + extra, sector)])


def test_noresize_keeps_every_saved_size_and_leaves_the_rest_free() -> None:
    group = vg(
        LogicalVolume("swap", 2 * GIB, fs_type="swap"),
        LogicalVolume("root", 10 * GIB, mount="/", fs_type="ext4", used_bytes=2 * GIB),
    )
    plan = plan_restore([disk(partitions=LVM_DISK)], [target(gib=40)], vgs=[group], resize=False)
    (d,) = plan.disks
    assert sizes(d) == [p.size_sectors * S for p in LVM_DISK]
    assert {p.how for p in d.partitions} <= {"fixed", "same"}
    assert [lv.new_bytes for lv in plan.vgs[0].lvs] == [2 * GIB, 10 * GIB]
    scaled = plan_restore([disk(partitions=LVM_DISK)], [target(gib=40)], vgs=[group])
    assert scaled.disks[0].partitions[1].new_bytes > d.partitions[1].new_bytes  # without the word


def test_noresize_passes_over_a_disk_that_cannot_hold_the_saved_sizes() -> None:
    """The smaller disk would hold the data shrunk; with noresize it is too small, and the
    larger one is chosen; with only the smaller one the plan is refused, saying why."""
    span = sum(p.size_sectors for p in STANDARD) * S + MIB + tail_bytes("gpt", S)
    small, large = target("sda", gib=12), target("sdb", gib=span / GIB + 1)
    plan = plan_restore([disk()], [small, large], resize=False)
    assert plan.disks[0].assignment.target.name == "sdb"
    assert sizes(plan.disks[0]) == [p.size_sectors * S for p in STANDARD]
    with pytest.raises(RestoreRefused, match=r"cannot place source disk sda: .*\(noresize: its partitions"):
        plan_restore([disk()], [small], resize=False)
    assert plan_restore([disk()], [small]).disks[0].assignment.target.name == "sda"  # shrunk, without it
