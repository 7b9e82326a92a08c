"""The storage stage's pure readers on outputs captured from a real guest (tests/data/storage,
see its README): /proc/mdstat, md sysfs, `mdadm --detail --export`, LVM JSON, PV labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from initrd_composer.boot.storage.parse import (
    MdstatArray,
    MdSysfs,
    StorageParseError,
    has_lvm_label,
    lvm_json,
    md_state,
    mdadm_uuid,
    member_path,
    parse_detail_export,
    parse_fullreport,
    parse_mdstat,
    read_md_sysfs,
)

DATA = Path(__file__).resolve().parent / "data" / "storage"
UUID = "c80f4c13:f501963e:9c25eaf9:022b3557"


def data(name: str) -> str:
    return (DATA / name).read_text()


def md_dir_from_capture(base: Path, capture: str) -> Path:
    """An md sysfs directory rebuilt from `cd /sys/block/mdX/md && grep -r . .` output."""
    for line in data(capture).splitlines():
        rel, _, value = line.partition(":")
        path = base / rel.removeprefix("./")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return base


def test_mdstat_lists_the_array_and_its_members() -> None:
    assert parse_mdstat(data("mdstat.txt")) == [
        MdstatArray("md127", True, "", "raid1", (("vda", 0, ""), ("vdb", 1, "")))
    ]
    (degraded,) = parse_mdstat(data("mdstat-degraded.txt"))
    assert degraded.members == (("vda", 0, ""),)
    assert parse_mdstat(data("mdstat-stopped.txt")) == []  # mdadm gave up: nothing listed


def test_mdstat_inactive_and_read_only_forms() -> None:
    # the kernel's other line shapes (drivers/md/md.c md_seq_show), not seen in the captures
    text = ("Personalities : [raid1]\nmd126 : active (auto-read-only) raid1 sdb[1] sda[0](W)\n"
            "md127 : inactive sdc[0](S)\n      1046528 blocks super 1.2\n")
    assert parse_mdstat(text) == [
        MdstatArray("md126", True, "auto-read-only", "raid1", (("sdb", 1, ""), ("sda", 0, "W"))),
        MdstatArray("md127", False, "", "", (("sdc", 0, "S"),)),
    ]
    with pytest.raises(StorageParseError, match="md0 : active raid1 vda"):
        parse_mdstat("md0 : active raid1 vda[x]\n")


def test_md_sysfs_of_a_clean_and_a_degraded_array(tmp_path: Path) -> None:
    clean = read_md_sysfs(str(md_dir_from_capture(tmp_path / "clean", "sysfs-md127.txt")))
    assert (clean.level, clean.array_state, clean.raid_disks, clean.degraded) == ("raid1", "clean", 2, 0)
    assert clean.members == (("vda", "0", "in_sync"), ("vdb", "1", "in_sync"))
    assert (clean.metadata_version, clean.sync_action) == ("1.2", "idle")
    assert md_state(clean) == "clean"
    degraded_dir = md_dir_from_capture(tmp_path / "degraded", "sysfs-md127-degraded.txt")
    degraded = read_md_sysfs(str(degraded_dir))
    assert degraded.degraded == 1 and degraded.members == (("vda", "0", "in_sync"),)
    assert md_state(degraded) == "clean, degraded"
    # the two ways of writing the UUID agree: the kernel's and mdadm's
    assert mdadm_uuid(clean.uuid) == UUID == parse_detail_export(data("mdadm-detail-export.txt")).uuid


def test_md_sysfs_of_a_cleared_device_and_sync_in_state(tmp_path: Path) -> None:
    cleared = read_md_sysfs(str(md_dir_from_capture(tmp_path, "sysfs-md127-cleared.txt")))
    assert (cleared.array_state, cleared.level, cleared.raid_disks) == ("clear", "", None)
    assert cleared.members == ()
    assert read_md_sysfs(str(tmp_path / "absent")).array_state == ""
    recovering = MdSysfs("raid1", "active", 2, 1, "recover", "1.2", "", (("vda", "0", "in_sync"),))
    assert md_state(recovering) == "active, degraded, recover"


def test_detail_export_name_devname_and_members() -> None:
    detail = parse_detail_export(data("mdadm-detail-export.txt"))
    assert (detail.name, detail.devname) == ("sourcebox:rescue-test", "rescue-test")
    assert detail.values["MD_LEVEL"] == "raid1"
    assert detail.values["MD_METADATA"] == "1.2" and detail.values["MD_DEVICES"] == "2"
    assert detail.devices == (("/dev/vda", "0"), ("/dev/vdb", "1"))
    assert detail.other_lines == ()
    assert parse_detail_export(data("mdadm-detail-export-degraded.txt")).devices == (("/dev/vda", "0"),)


def test_detail_export_keeps_mdadm_messages_apart() -> None:
    detail = parse_detail_export("mdadm: Array associated with md device /dev/md127 does not exist.\n")
    assert detail.values == {} and detail.devices == () and detail.uuid is None
    assert detail.other_lines == ("mdadm: Array associated with md device /dev/md127 does not exist.",)


def test_uuid_and_member_path_forms() -> None:
    assert mdadm_uuid("C80F4C13-F501-963E-9C25-EAF9022B3557") == UUID
    assert mdadm_uuid("not-a-uuid") == "not-a-uuid"
    assert member_path("cciss!c0d0p1") == "/dev/cciss/c0d0p1" and member_path("vda") == "/dev/vda"


def test_fullreport_volume_groups_pvs_and_lvs() -> None:
    vgsolo, vgtest = parse_fullreport(data("lvm-fullreport.json"))
    assert (vgtest.name, vgtest.uuid, vgtest.pvs, vgtest.missing_pvs) == (
        "vgtest", "aOTvxt-2zZZ-ZyTZ-jC5N-5qU4-Hl3H-GLw7w0", ("/dev/md127",), 0)
    (lvdata,) = vgtest.lvs
    assert (lvdata.name, lvdata.path, lvdata.size_bytes) == ("lvdata", "/dev/vgtest/lvdata", 8 << 20)
    assert lvdata.active
    assert [(lv.name, lv.size_bytes) for lv in vgsolo.lvs] == [("lvone", 12 << 20), ("lvtwo", 4 << 20)]
    assert vgsolo.pvs == ("/dev/vdc",)
    assert parse_fullreport(data("lvm-fullreport-empty.json")) == []


def test_fullreport_of_a_partial_vg_with_warnings_inside_the_json() -> None:
    text = data("lvm-fullreport-partial.json")
    assert "WARNING: Couldn't find device" in text  # stderr landed between two VG reports
    vgsolo, vgtest = parse_fullreport(text)
    assert vgsolo.missing_pvs == 1 and vgsolo.pvs == ("/dev/vdb", "[unknown]")
    assert [(lv.name, lv.active) for lv in vgsolo.lvs] == [
        ("lvloop", False), ("lvone", True), ("lvtwo", True)]
    assert [lv.name for lv in vgtest.lvs] == ["lvdata"]


def test_lvm_json_refuses_what_is_no_report() -> None:
    with pytest.raises(StorageParseError, match="no JSON report"):
        lvm_json("  No volume groups found.\n")
    with pytest.raises(StorageParseError, match="not JSON"):
        lvm_json(data("lvm-fullreport.json")[:400])
    with pytest.raises(StorageParseError, match="no 'report' list"):
        lvm_json('{"vg": []}')


def test_lvm_label_on_a_disk_and_an_array_not_on_an_md_member() -> None:
    assert has_lvm_label((DATA / "header-pv-disk.bin").read_bytes())
    assert has_lvm_label((DATA / "header-pv-md.bin").read_bytes())
    # vda is an md 1.2 member: its superblock at 4 KiB, the PV 1 MiB in (the array's data)
    assert not has_lvm_label((DATA / "header-md-member.bin").read_bytes())
    assert not has_lvm_label(bytes(2048))


def test_lvm_label_only_where_lvm_looks() -> None:
    header = (DATA / "header-pv-disk.bin").read_bytes()
    label = header[512:1024]  # the real label sits in sector 1
    assert has_lvm_label(bytes(1536) + label)  # sector 3: the last LVM reads
    assert not has_lvm_label(bytes(2048) + label)  # sector 4: LVM would not find it
    assert not has_lvm_label(label[:24] + b"LVM1 001" + label[32:])  # LABELONE of another type
