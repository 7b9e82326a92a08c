"""The restore plan as console lines and as the report's `restore` section
(boot/restore/plan_text.py), and the whole plan's determinism."""

from __future__ import annotations

import itertools
import json

import pytest

from initrd_composer.boot.restore import RestoreRefused
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
from initrd_composer.boot.restore.plan_text import plan_dict, plan_lines, refusal_dict, refusal_lines
from initrd_composer.boot.restore.sizing import RestorePlan, plan_restore

ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
RAID = "A19D880F-05FC-4D3B-A006-743F0F84911E"
M = MIB // 512

SDA = SourceDisk(
    "sda", 20 * GIB, 512, serial="X", transport="virtio",
    partitions=(
        SourcePartition(1, M, 512 * M, ESP, "/boot/efi", "vfat", 10 * MIB),
        SourcePartition(2, 513 * M, 8 * 1024 * M, LINUX, "/", "ext4", 2 * GIB),
        SourcePartition(3, 8705 * M, 4 * 1024 * M, LVM, "", "LVM2_member"),
    ),
)
SDB = SourceDisk(
    "sdb", 10 * GIB, 512, wwn="0x5001", transport="sata",
    partitions=(SourcePartition(1, M, 9 * 1024 * M, RAID, "", "linux_raid_member"),),
)
SDC = SourceDisk(
    "sdc", 10 * GIB, 512, transport="sata",
    partitions=(SourcePartition(1, M, 9 * 1024 * M, RAID, "", "linux_raid_member"),),
)
DATA_LV = LogicalVolume("data", 3 * GIB, mount="/srv", fs_type="xfs")
VG = VolumeGroup("vg0", 4 * MIB, (("sda", 3),), (DATA_LV,))
MD = MdArray("md0", "raid1", (("sdb", 1), ("sdc", 1)), "ext4", "/home", GIB)
TARGETS = [
    TargetDisk("nvme0n1", 30 * GIB, 512, transport="nvme"),
    TargetDisk("sdb", 12 * GIB, 512, transport="sata"),
    TargetDisk("sdc", 10 * GIB, 512, wwn="0x5001", transport="sata"),
    TargetDisk("sdd", 64 * GIB, 512, transport="usb", holds_restore_set=True),
]


def plan(targets: list[TargetDisk] = TARGETS) -> RestorePlan:
    return plan_restore([SDA, SDB, SDC], targets, vgs=[VG], arrays=[MD])


def test_console_lines() -> None:
    lines = plan_lines(plan())
    assert lines[0] == "sda (virtio 20.0 GiB, serial X) -> nvme0n1 (nvme 30.0 GiB): by size"
    assert lines[1] == (
        "  sda1 -> nvme0n1p1 [esp vfat /boot/efi]: 512.0 MiB -> 512.0 MiB "
        "(fixed, start 2048, 1048576 sectors of 512)"
    )
    assert lines[2].startswith("  sda2 -> nvme0n1p2 [data ext4 /]: 8.0 GiB -> 12.")
    assert lines[4] == "sdb (sata 10.0 GiB, WWN 0x5001) -> sdc (sata 10.0 GiB, WWN 0x5001): by WWN 0x5001"
    assert lines[5].endswith("(same, start 2048, 18874368 sectors of 512)")
    assert lines[6] == "sdc (sata 10.0 GiB) -> sdb (sata 12.0 GiB): by size"
    assert lines[8].startswith("vg vg0 (4.0 MiB extents): 1023 -> ")
    assert lines[9].startswith("  vg0/data: 3.0 GiB -> 4.")
    assert lines[10] == "md md0 (raid1 on sdc1, sdb1): 9.0 GiB -> 9.0 GiB"
    assert lines[11] == "not written: sdd (usb 64.0 GiB): holds the restore set"
    assert len(lines) == 12
    spare = TargetDisk("sde", GIB, 512, transport="sata")
    assert plan_lines(plan([*TARGETS, spare]))[-1] == "not written: sde (sata 1.0 GiB): not needed"


def test_report_section_is_json_and_says_where_and_why() -> None:
    section = plan_dict(plan())
    assert json.loads(json.dumps(section)) == section
    assert section["mapping"] == [
        {"source": s, "target": t, "reason": r, "source_bytes": sb * GIB, "target_bytes": tb * GIB}
        for s, t, r, sb, tb in (
            ("sda", "nvme0n1", "by size", 20, 30),
            ("sdb", "sdc", "by WWN 0x5001", 10, 10),
            ("sdc", "sdb", "by size", 10, 12),
        )
    ]
    assert section["reasons"] == [
        "sda -> nvme0n1: by size", "sdb -> sdc: by WWN 0x5001", "sdc -> sdb: by size"
    ]
    body = section["plan"]
    assert isinstance(body, dict)
    esp = body["disks"][0]["partitions"][0]
    assert esp == {
        "number": 1, "role": "esp", "fs_type": "vfat", "mount": "/boot/efi", "old_bytes": 512 * MIB,
        "new_bytes": 512 * MIB, "start_sector": 2048, "size_sectors": 512 * M, "sector": 512, "how": "fixed",
    }
    assert body["arrays"][0]["members"] == [["sdc", 1], ["sdb", 1]]
    assert body["vgs"][0]["lvs"][0]["name"] == "data"
    assert section["unused"] == [{"target": "sdd", "bytes": 64 * GIB, "why": "holds the restore set"}]


def test_refusal_lines_and_section() -> None:
    with pytest.raises(RestoreRefused) as refused:
        plan(TARGETS[:1] + TARGETS[3:])
    lines = refusal_lines(refused.value)
    assert lines[0] == (
        "restore refused, nothing written: cannot place source disk sdb: "
        "too few target disks (1 usable for 3 source disks); "
        "sdd would fit but holds the restore set and is never written"
    )
    assert lines[1:] == [
        "target disks:",
        "  nvme0n1 (nvme 30.0 GiB): taken by source disk sda",
        "  sdd (usb 64.0 GiB): holds the restore set",
    ]
    assert refusal_dict(refused.value) == {"refused": refused.value.message, "hint": refused.value.hint}


def test_same_input_same_plan_whatever_the_target_order() -> None:
    expected = plan_lines(plan())
    for order in itertools.permutations(TARGETS):
        assert plan_lines(plan(list(order))) == expected
        assert plan_dict(plan(list(order))) == plan_dict(plan())
