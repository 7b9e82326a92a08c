"""layout.json into the restore planner: a layout shaped like the test source machine's (GPT,
BIOS boot, ext4 /boot, swap, LVM vg0 with ext4 root and xfs /srv), made with the capture's own
document builder so it passes the same validation, then planned onto other disks."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.from_layout import plan_inputs
from initrd_composer.boot.restore.model import GIB, MIB, LogicalVolume, TargetDisk
from initrd_composer.boot.restore.sizing import plan_restore
from initrd_composer.capture.layout.document import new_layout

BIOS = "21686148-6449-6E6F-744E-656564454649"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
SECTORS = (6 * GIB) // 512


def _part(n: int, start: int, size: int, kind: str, content: str | None) -> dict[str, Any]:
    return {"node": f"/dev/vda{n}", "number": n, "start": start, "size": size, "type": kind, "uuid": "",
            "name": "", "attrs": "", "bootable": False, "bios_boot": kind == BIOS, "esp": False,
            "content": content, "raw": None}  # fmt: skip


def _fs(device: str, kind: str, mount: str, used: int | None) -> dict[str, Any]:
    return {"device": device, "type": kind, "uuid": "u-" + device, "label": "", "mountpoint": mount or None,
            "features": {}, "fstab": None, "used_bytes": used}  # fmt: skip


def source_layout() -> dict[str, Any]:
    lvm_start = 2048 + 2048 + 786432 + 524288
    parts = [_part(1, 2048, 2048, BIOS, None), _part(2, 4096, 786432, LINUX, "ext4"),
             _part(3, 790528, 524288, SWAP, "swap"),
             _part(4, lvm_start, SECTORS - lvm_start - 2048, LVM, "LVM2_member")]  # fmt: skip
    disk = {"name": "vda", "path": "/dev/vda", "size_bytes": 6 * GIB, "logical_sector_size": 512,
            "physical_sector_size": 512, "model": "", "serial": "src-serial", "wwn": "",
            "partition_table": {"label": "gpt", "id": "", "sector_size": 512, "first_lba": 34,
                                "last_lba": SECTORS - 34, "partitions": parts},
            "boot_sector": {"grub": True}, "gap": None}  # fmt: skip
    lvs = [{"name": name, "uuid": name, "size_bytes": size, "segtypes": ["linear"], "refused": None,
            "hidden": False} for name, size in (("root", 3 * GIB), ("srv", 1 * GIB))]  # fmt: skip
    vg = {"name": "vg0", "uuid": "vg", "extent_size_bytes": 4 * MIB, "size_bytes": 5 * GIB,
          "pvs": [{"device": "/dev/vda4", "uuid": "pv", "size_bytes": 5 * GIB}], "lvs": lvs,
          "vgcfgbackup": ""}  # fmt: skip
    fss = [_fs("/dev/vda2", "ext4", "/boot", 80 * MIB), _fs("/dev/vda3", "swap", "", None),
           _fs("/dev/vg0/root", "ext4", "/", 900 * MIB),
           _fs("/dev/vg0/srv", "xfs", "/srv", 40 * MIB)]  # fmt: skip
    return new_layout(disks=[disk], md_arrays=[], volume_groups=[vg], filesystems=fss, fstab=None,
                      bootloader={"bios_grub_disks": ["/dev/vda"]}, refused=[])  # fmt: skip


USB = TargetDisk("sda", 32 * GIB, 512, serial="stick", transport="usb", holds_restore_set=True)


def test_the_layout_becomes_the_planners_disks_volumes_and_roles() -> None:
    inputs = plan_inputs(source_layout())
    (disk,) = inputs.sources
    assert (disk.name, disk.size_bytes, disk.serial, disk.table) == ("vda", 6 * GIB, "src-serial", "gpt")
    assert [(p.number, p.role, p.mount, p.fs_type) for p in disk.partitions] == [
        (1, "bios-boot", "", ""), (2, "boot", "/boot", "ext4"), (3, "swap", "swap", "swap"),
        (4, "lvm-pv", "", "LVM2_member"),
    ]  # fmt: skip
    (vg,) = inputs.vgs
    assert vg.pvs == (("vda", 4),) and vg.extent_bytes == 4 * MIB
    assert vg.lvs == (LogicalVolume("root", 3 * GIB, "linear", "/", "ext4", 900 * MIB),
                      LogicalVolume("srv", 1 * GIB, "linear", "/srv", "xfs", 40 * MIB))  # fmt: skip


def test_planned_onto_a_larger_nvme_disk_never_the_restore_sets_stick() -> None:
    inputs = plan_inputs(source_layout())
    nvme = TargetDisk("nvme0n1", 10 * GIB, 512, transport="nvme")
    plan = plan_restore(inputs.sources, [USB, nvme], inputs.vgs, inputs.arrays)
    (disk,) = plan.disks
    assert disk.assignment.target.name == "nvme0n1"
    sizes = {p.number: (p.how, p.size_sectors * 512) for p in disk.partitions}
    assert (sizes[1], sizes[2], sizes[3]) == (("fixed", 1 * MIB), ("fixed", 384 * MIB), ("fixed", 256 * MIB))
    assert sizes[4][0] == "scaled" and sizes[4][1] > 9 * GIB
    (vg,) = plan.vgs
    assert all(lv.new_bytes > lv.old_bytes for lv in vg.lvs)
    assert [t.name for t, _ in plan.unused] == ["sda"]


def test_a_disk_too_small_for_the_used_bytes_is_refused() -> None:
    inputs = plan_inputs(source_layout())
    with pytest.raises(RestoreRefused):
        plan_restore(inputs.sources, [USB, TargetDisk("vdb", 1 * GIB, 512)], inputs.vgs, inputs.arrays)


def test_what_the_restore_cannot_make_is_refused_before_planning() -> None:
    luks = copy.deepcopy(source_layout())
    luks["refused"] = [{"kind": "signature", "name": "/dev/vdb", "reason": "LUKS encrypted"}]
    with pytest.raises(RestoreRefused, match="LUKS encrypted"):
        plan_inputs(luks)
    whole = copy.deepcopy(source_layout())
    whole["disks"][0]["partition_table"] = None
    with pytest.raises(RestoreRefused, match="no partition table"):
        plan_inputs(whole)
    thin = copy.deepcopy(source_layout())
    thin["lvm"]["volume_groups"][0]["lvs"][1]["segtypes"] = ["thin-pool"]
    inputs = plan_inputs(thin)
    with pytest.raises(RestoreRefused, match="thin-pool"):
        plan_restore(inputs.sources, [TargetDisk("vdb", 10 * GIB, 512)], inputs.vgs, inputs.arrays)
