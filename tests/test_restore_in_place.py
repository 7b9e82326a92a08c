"""`nopart` (boot/restore/in_place.py): the saved partitions go into the target's partitions
of the same numbers, at their starts and sizes, with no partition table written; a missing
partition, a boot-loader partition smaller than the saved one, or a filesystem that does not
fit is refused naming it; LVM sizes follow the existing PV. The disks' partitions come from
/sys as the kernel has them."""

from __future__ import annotations

from pathlib import Path

import pytest

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.expert_steps import disk_dict, disk_from
from initrd_composer.boot.restore.in_place import IN_PLACE
from initrd_composer.boot.restore.model import (
    GIB,
    MIB,
    ExistingPartition,
    LogicalVolume,
    TargetDisk,
    VolumeGroup,
)
from initrd_composer.boot.restore.plan_text import plan_dict, plan_lines
from initrd_composer.boot.restore.sizing import plan_restore
from initrd_composer.boot.restore.targets import read_target_disks
from tests.test_restore_sizing import BIOS, LVM, disk, parts

# The existing table: partitions 1-5 as the saved disk has them, but at other places and sizes,
# and a sixth partition the saved disk never had.
EXISTING = (
    ExistingPartition(1, 1 * MIB, 2 * MIB),
    ExistingPartition(2, 3 * MIB, 600 * MIB),
    ExistingPartition(3, 603 * MIB, 1024 * MIB),
    ExistingPartition(4, 1627 * MIB, 1024 * MIB),
    ExistingPartition(5, 2651 * MIB, 8 * GIB),
    ExistingPartition(6, 2651 * MIB + 8 * GIB, 4 * GIB),
)


def target(partitions: tuple[ExistingPartition, ...] = EXISTING, gib: int = 30) -> TargetDisk:
    return TargetDisk("vdb", gib * GIB, 512, transport="virtio", partitions=partitions)


def test_each_partition_is_used_where_and_as_it_is() -> None:
    plan = plan_restore([disk()], [target()], in_place=True)
    assert plan.in_place
    (d,) = plan.disks
    by_number = {p.number: p for p in EXISTING}
    assert [(p.number, p.start_bytes, p.new_bytes, p.how) for p in d.partitions] == [
        (n, by_number[n].start_bytes, by_number[n].size_bytes, IN_PLACE) for n in range(1, 6)
    ]
    assert "nopart: no partition table is written" in plan_lines(plan)[-1]
    assert plan_dict(plan)["in_place"] is True
    assert not plan_restore([disk()], [target()]).in_place


def test_a_missing_partition_is_refused_naming_it() -> None:
    says = r"nopart: target disk vdb has no partition 5 for sda5 \(ext4 /, 12.0 GiB\)"
    with pytest.raises(RestoreRefused, match=says):
        plan_restore([disk()], [target(EXISTING[:4])], in_place=True)


def test_a_disk_without_partitions_is_not_a_target() -> None:
    with pytest.raises(RestoreRefused, match="too few target disks"):
        plan_restore([disk()], [target(())], in_place=True)


def test_boot_loader_partitions_must_hold_what_they_held() -> None:
    small_esp = (*EXISTING[:1], ExistingPartition(2, 3 * MIB, 100 * MIB), *EXISTING[2:])
    with pytest.raises(RestoreRefused, match=r"nopart: vdb2 \(100.0 MiB\) is smaller than sda2 \(esp vfat"):
        plan_restore([disk()], [target(small_esp)], in_place=True)


def test_a_filesystem_that_does_not_fit_is_refused_and_one_that_does_may_shrink() -> None:
    small_root = (*EXISTING[:4], ExistingPartition(5, 2651 * MIB, 2 * GIB))
    with pytest.raises(RestoreRefused, match=r"filesystem / \(ext4 on vdb5\) uses 3.0 GiB"):
        plan_restore([disk()], [target(small_root)], in_place=True)
    fitting = (*EXISTING[:4], ExistingPartition(5, 2651 * MIB, 4 * GIB))
    plan = plan_restore([disk()], [target(fitting)], in_place=True)
    assert plan.disks[0].partitions[-1].new_bytes == 4 * GIB


def test_lvm_follows_the_existing_pv() -> None:
    saved = disk(partitions=parts((BIOS, 1, "", "", None), (LVM, 10 * 1024, "", "LVM2_member", None)))
    group = VolumeGroup("vg0", 4 * MIB, (("sda", 2),), (
        LogicalVolume("swap", GIB, fs_type="swap"),
        LogicalVolume("root", 8 * GIB, mount="/", fs_type="ext4", used_bytes=2 * GIB),
    ))  # fmt: skip
    existing = (ExistingPartition(1, MIB, MIB), ExistingPartition(2, 2 * MIB, 20 * GIB))
    plan = plan_restore([saved], [target(existing)], vgs=[group], in_place=True)
    (vg,) = plan.vgs
    assert vg.new_extents == (20 * GIB - MIB) // (4 * MIB)
    assert vg.lvs[0].new_bytes == GIB and vg.lvs[1].new_bytes > 8 * GIB


def test_the_kernels_partitions_are_read_from_sys_and_kept_by_the_expert_state(tmp_path: Path) -> None:
    block = tmp_path / "block" / "vdb"
    (block / "device").mkdir(parents=True)
    (block / "size").write_text(f"{30 * GIB // 512}\n")
    (block / "queue").mkdir()
    (block / "queue" / "logical_block_size").write_text("512\n")
    for number, start, size in ((2, 4096, 2048000), (1, 2048, 2048)):
        part = block / f"vdb{number}"
        part.mkdir()
        (part / "partition").write_text(f"{number}\n")
        (part / "start").write_text(f"{start}\n")
        (part / "size").write_text(f"{size}\n")
    (disk_read,) = read_target_disks(tmp_path)
    assert disk_read.partitions == (ExistingPartition(1, 2048 * 512, 2048 * 512),
                                    ExistingPartition(2, 4096 * 512, 2048000 * 512))  # fmt: skip
    assert disk_from(disk_dict(disk_read)) == disk_read
