"""The sfdisk script of a planned disk (boot/restore/sfdisk_script.py): the text itself, and
the real sfdisk writing it onto a sparse image (a 4Kn loop device for the root test) and
reading it back with `sfdisk --json` through the capture's own parser, for layouts made from
the real tables in tests/data/layout (sfdisk-gpt.json, sfdisk-dos.json)."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.disk_map import DiskAssignment
from initrd_composer.boot.restore.from_layout import plan_inputs
from initrd_composer.boot.restore.model import GIB, MIB, SourceDisk, TargetDisk
from initrd_composer.boot.restore.sfdisk_script import quote, sfdisk_argv, sfdisk_script
from initrd_composer.boot.restore.sizing import DiskPlan, PartitionPlan, RestorePlan, plan_restore
from initrd_composer.capture.layout import filesystems
from initrd_composer.capture.layout.document import new_layout
from initrd_composer.capture.layout.partitions import parse_sfdisk_json
from initrd_composer.runner import run
from tests.layout_fixtures import layout_data

GPT_BYTES = 2 * GIB  # the fixture's image: lastlba 4194270 + 34
DOS_BYTES = 64 * MIB


def _fs(blkid: str, mount: str | None, used: int | None) -> dict[str, Any]:
    probe = filesystems.parse_blkid_export(layout_data(blkid))
    return {**filesystems.identity(probe), "device": probe["DEVNAME"], "mountpoint": mount,
            "partuuid": probe.get("PART_ENTRY_UUID"), "partlabel": probe.get("PART_ENTRY_NAME"),
            "features": None, "fstab": None, "used_bytes": used, "size_bytes": None}  # fmt: skip


def _disk(name: str, size: int, table: dict[str, Any], drop: Iterable[int]) -> dict[str, Any]:
    table = copy.deepcopy(table)
    table["partitions"] = [p for p in table["partitions"] if p["number"] not in set(drop)]
    for p in table["partitions"]:
        p["content"], p["raw"] = None, None
    return {"name": name, "path": f"/dev/{name}", "size_bytes": size, "logical_sector_size": 512,
            "physical_sector_size": 512, "model": None, "serial": None, "wwn": None,
            "partition_table": table, "boot_sector": {"grub": False}, "gap": None}  # fmt: skip


def gpt_layout(drop: Iterable[int] = ()) -> dict[str, Any]:
    """The fixture's GPT disk (BIOS boot, ESP, /boot, swap, /srv with 100 MiB used) as a layout."""
    disk = _disk("loop0", GPT_BYTES, parse_sfdisk_json(layout_data("sfdisk-gpt.json")), drop)
    numbers = {p["number"] for p in disk["partition_table"]["partitions"]}
    fss = [_fs("blkid-p2.txt", "/boot/efi", 2 * MIB), _fs("blkid-p3.txt", "/boot", 20 * MIB),
           _fs("blkid-p4.txt", None, None), _fs("blkid-p5.txt", "/srv", 100 * MIB)]  # fmt: skip
    fss = [fs for fs in fss if int(fs["device"][-1]) in numbers]
    return new_layout(disks=[disk], md_arrays=[], volume_groups=[], filesystems=fss, fstab=None,
                      bootloader={}, refused=[])  # fmt: skip


def dos_layout() -> dict[str, Any]:
    """The fixture's dos disk without its extended partition 3 and logical 5 (refused)."""
    disk = _disk("sdb", DOS_BYTES, parse_sfdisk_json(layout_data("sfdisk-dos.json")), drop=(3, 5))
    return new_layout(disks=[disk], md_arrays=[], volume_groups=[], filesystems=[], fstab=None,
                      bootloader={}, refused=[])  # fmt: skip


def plan_onto(layout: dict[str, Any], target: TargetDisk) -> RestorePlan:
    inputs = plan_inputs(layout)
    return plan_restore(inputs.sources, [target], inputs.vgs, inputs.arrays)


def test_the_gpt_script_keeps_ids_types_names_and_attrs() -> None:
    layout = gpt_layout()
    (disk,) = plan_onto(layout, TargetDisk("nvme0n1", 4 * GIB, 512)).disks
    text = sfdisk_script(disk, layout["disks"][0])
    head, body = text.split("\n\n")
    assert head.splitlines() == ["label: gpt", "label-id: 11111111-2222-3333-4444-555555555555",
                                 "unit: sectors", "sector-size: 512", "first-lba: 2048"]  # fmt: skip
    lines = body.splitlines()
    assert [line.split(" : ")[0] for line in lines] == [f"/dev/nvme0n1p{n}" for n in range(1, 6)]
    assert lines[0] == ("/dev/nvme0n1p1 : start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, "
                        'uuid=AAAAAAAA-0000-4000-8000-000000000001, name="bios"')  # fmt: skip
    assert 'name="EFI System"' in lines[1] and lines[2].endswith('attrs="LegacyBIOSBootable"')
    p5 = disk.partition(5)
    assert p5 is not None and f"start={p5.start_sector}, size={p5.size_sectors}," in lines[4]
    assert text.endswith("\n")


def test_names_are_quoted_as_sfdisk_dumps_them() -> None:
    assert quote("EFI System") == '"EFI System"'
    assert quote('a"b\\c$d`e') == '"a\\x22b\\x5cc\\x24d\\x60e"'
    assert quote("Bööt\t") == '"B\\xc3\\xb6\\xc3\\xb6t\\x09"'


def test_the_dos_script_keeps_the_id_and_the_boot_flag() -> None:
    layout = dos_layout()
    (disk,) = plan_onto(layout, TargetDisk("sdb", 256 * MIB, 512)).disks
    text = sfdisk_script(disk, layout["disks"][0])
    assert text.startswith("label: dos\nlabel-id: 0x12345678\nunit: sectors\nsector-size: 512\n\n")
    assert "first-lba" not in text
    p1, p2 = text.split("\n\n")[1].splitlines()
    assert p1.startswith("/dev/sdb1 : start=2048, size=") and p1.endswith(", type=83, bootable")
    assert p2.startswith("/dev/sdb2 : ") and p2.endswith("size=32768, type=82")


def test_first_lba_is_dropped_when_the_sector_size_changes() -> None:
    layout = gpt_layout()
    (disk,) = plan_onto(layout, TargetDisk("sdc", 4 * GIB, 4096)).disks
    text = sfdisk_script(disk, layout["disks"][0])
    assert "sector-size: 4096\n" in text and "first-lba" not in text
    assert "/dev/sdc1 : start=256, size=256," in text  # 1 MiB in 4096-byte sectors


def _by_hand(target: TargetDisk, layout_disk: dict[str, Any], *parts: tuple[int, int, int]) -> DiskPlan:
    source = SourceDisk(str(layout_disk["name"]), int(layout_disk["size_bytes"]), 512)
    planned = tuple(PartitionPlan(n, "data", "", "", 0, start, size, target.logical_sector, "same")
                    for n, start, size in parts)  # fmt: skip
    return DiskPlan(DiskAssignment(source, target, "by size"), planned)


def test_what_the_table_cannot_hold_is_refused() -> None:
    layout = dos_layout()
    (disk,) = plan_onto(layout, TargetDisk("sdb", 3 * 1024 * GIB, 512)).disks
    with pytest.raises(RestoreRefused, match=r"sdb1 would end at sector \d+, past an MBR table's 2\^32"):
        sfdisk_script(disk, layout["disks"][0])
    saved = dos_layout()["disks"][0]
    big = TargetDisk("sdb", GIB, 512)
    with_logical = _disk("sdb", DOS_BYTES, parse_sfdisk_json(layout_data("sfdisk-dos.json")), drop=())
    with pytest.raises(RestoreRefused, match="sdb5 is an MBR logical partition"):
        sfdisk_script(_by_hand(big, with_logical, (5, 2048, 2048)), with_logical)
    with pytest.raises(RestoreRefused, match="has no partition 3"):
        sfdisk_script(_by_hand(big, saved, (3, 2048, 2048)), saved)
    four_k = _by_hand(TargetDisk("sdb", GIB, 4096), saved, (1, 256, 256))
    assert sfdisk_script(four_k, saved).endswith("/dev/sdb1 : start=256, size=256, type=83, bootable\n")
    bad = PartitionPlan(1, "data", "", "", 0, 2048, 2048, 512, "same")
    with pytest.raises(RestoreRefused, match="planned in 512-byte sectors, the disk has 4096"):
        sfdisk_script(DiskPlan(four_k.assignment, (bad,)), saved)


# --- the real sfdisk ------------------------------------------------------------------------------


def _write_and_read(target: str, script: str) -> dict[str, Any]:
    run(sfdisk_argv(target), input_bytes=script.encode())
    return parse_sfdisk_json(run(["sfdisk", "--json", target]).stdout.decode())


def _assert_table_is_the_plan(table: dict[str, Any], disk: DiskPlan, saved: dict[str, Any]) -> None:
    saved_table = saved["partition_table"]
    assert (table["label"], table["id"]) == (saved_table["label"], saved_table["id"])
    assert table["sector_size"] == disk.assignment.target.logical_sector
    got = {p["number"]: p for p in table["partitions"]}
    assert sorted(got) == sorted(p.number for p in disk.partitions)
    keys = ("type", "uuid", "name", "attrs", "bootable")
    for part in disk.partitions:
        back = got[part.number]
        old = next(p for p in saved_table["partitions"] if p["number"] == part.number)
        assert (back["start"], back["size"]) == (part.start_sector, part.size_sectors)
        assert {k: back[k] for k in keys} == {k: old[k] for k in keys}


def _image(tmp_path: Path, size: int) -> str:
    assert shutil.which("sfdisk"), "install fdisk (util-linux's sfdisk)"
    image = tmp_path / "target.img"
    with open(image, "wb") as f:
        f.truncate(size)
    return str(image)


@pytest.mark.parametrize("size", [4 * GIB, GIB], ids=["larger", "smaller"])
def test_real_sfdisk_writes_the_planned_gpt(tmp_path: Path, size: int) -> None:
    layout = gpt_layout()
    # Names sfdisk's script syntax must carry: a quote, a backslash, a comma, UTF-8, a `$`.
    layout["disks"][0]["partition_table"]["partitions"][4]["name"] = 'd"at\\a, é $HOME'
    (disk,) = plan_onto(layout, TargetDisk("vdb", size, 512)).disks
    p5 = disk.partition(5)
    assert p5 is not None and p5.how == "scaled" and (p5.new_bytes > p5.old_bytes) == (size > GPT_BYTES)
    table = _write_and_read(_image(tmp_path, size), sfdisk_script(disk, layout["disks"][0]))
    _assert_table_is_the_plan(table, disk, layout["disks"][0])
    assert table["first_lba"] == 2048 and table["partitions"][-1]["name"] == 'd"at\\a, é $HOME'


def test_real_sfdisk_keeps_the_numbers_of_a_table_with_a_gap(tmp_path: Path) -> None:
    layout = gpt_layout(drop=[2])
    (disk,) = plan_onto(layout, TargetDisk("vdb", 3 * GIB, 512)).disks
    table = _write_and_read(_image(tmp_path, 3 * GIB), sfdisk_script(disk, layout["disks"][0]))
    assert [p["number"] for p in table["partitions"]] == [1, 3, 4, 5]
    _assert_table_is_the_plan(table, disk, layout["disks"][0])


def test_real_sfdisk_writes_the_planned_dos_table(tmp_path: Path) -> None:
    layout = dos_layout()
    (disk,) = plan_onto(layout, TargetDisk("sdb", 256 * MIB, 512)).disks
    table = _write_and_read(_image(tmp_path, 256 * MIB), sfdisk_script(disk, layout["disks"][0]))
    _assert_table_is_the_plan(table, disk, layout["disks"][0])
    assert [(p["number"], p["bootable"]) for p in table["partitions"]] == [(1, True), (2, False)]


@pytest.fixture
def loop_4k(tmp_path: Path) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for a loop device (marker: root)")
    image = _image(tmp_path, 4 * GIB)
    loop = run(["losetup", "-f", "--show", "--sector-size", "4096", image]).stdout.decode().strip()
    try:
        yield loop
    finally:
        run(["losetup", "-d", loop])


@pytest.mark.root
def test_real_sfdisk_writes_the_plan_onto_a_4k_sector_disk(loop_4k: str) -> None:
    """The saved 512-byte-sector table onto a 4Kn disk: the plan's sectors are the disk's,
    and the script's sector-size must say so, or sfdisk would rescale them."""
    layout = gpt_layout()
    (disk,) = plan_onto(layout, TargetDisk(Path(loop_4k).name, 4 * GIB, 4096)).disks
    table = _write_and_read(loop_4k, sfdisk_script(disk, layout["disks"][0]))
    assert table["sector_size"] == 4096
    _assert_table_is_the_plan(table, disk, layout["disks"][0])
