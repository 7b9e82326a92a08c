"""The layout's pure parsers on real tool output (tests/data/layout and the guest captures in
tests/data/storage; see their READMEs for which are hand-written) and the document's checks."""

from __future__ import annotations

import hashlib
import json

import pytest

from initrd_composer.capture.layout import (
    LayoutError,
    bootloader,
    filesystems,
    partitions,
    volumes,
)
from tests.layout_fixtures import layout_data, storage_data

# --- partitions ---------------------------------------------------------------------------------


def test_sfdisk_gpt() -> None:
    table = partitions.parse_sfdisk_json(layout_data("sfdisk-gpt.json"))
    assert (table["label"], table["id"], table["sector_size"]) == (
        "gpt",
        "11111111-2222-3333-4444-555555555555",
        512,
    )
    assert (table["first_lba"], table["last_lba"]) == (2048, 4194270)
    first = table["partitions"][0]
    assert first == {
        "node": "/dev/loop0p1",
        "number": 1,
        "start": 2048,
        "size": 2048,
        "type": partitions.BIOS_BOOT_GUID,
        "uuid": "AAAAAAAA-0000-4000-8000-000000000001",
        "name": "bios",
        "attrs": None,
        "bootable": False,
        "bios_boot": True,
        "esp": False,
    }
    assert [p["esp"] for p in table["partitions"]] == [False, True, False, False, False]
    assert table["partitions"][2]["attrs"] == "LegacyBIOSBootable"
    assert partitions.first_partition_start(table) == 2048


def test_sfdisk_dos_with_logical_partition() -> None:
    table = partitions.parse_sfdisk_json(layout_data("sfdisk-dos.json"))
    assert (table["label"], table["id"]) == ("dos", "0x12345678")
    got = [(p["number"], p["start"], p["size"], p["type"], p["bootable"]) for p in table["partitions"]]
    assert got == [
        (1, 2048, 65536, "83", True),
        (2, 67584, 32768, "82", False),
        (3, 100352, 30720, "5", False),
        (5, 102400, 8192, "83", False),
    ]
    assert not any(p["bios_boot"] or p["esp"] or p["uuid"] for p in table["partitions"])


def test_sfdisk_refuses_other_tables() -> None:
    with pytest.raises(LayoutError, match="no gpt or dos"):
        partitions.parse_sfdisk_json('{"partitiontable": {"label": "sun", "partitions": []}}')
    with pytest.raises(LayoutError, match="not JSON"):
        partitions.parse_sfdisk_json("sfdisk: cannot open /dev/sdz")


def test_lsblk_disk() -> None:
    disk = partitions.parse_lsblk_disk(layout_data("lsblk-loop.json"))
    assert disk == {
        "name": "loop0",
        "size_bytes": 2 * 1024**3,
        "logical_sector_size": 512,
        "physical_sector_size": 512,
        "model": None,
        "serial": None,
        "wwn": None,
    }
    row = json.loads(layout_data("lsblk-loop.json"))
    row["blockdevices"][0].update(
        {"model": "QEMU HARDDISK   ", "serial": "QM00001", "wwn": "0x5000c500a1b2c3d4", "phy-sec": 4096}
    )
    disk = partitions.parse_lsblk_disk(json.dumps(row))
    assert (disk["model"], disk["serial"], disk["wwn"], disk["physical_sector_size"]) == (
        "QEMU HARDDISK",
        "QM00001",
        "0x5000c500a1b2c3d4",
        4096,
    )


# --- filesystems --------------------------------------------------------------------------------


def test_blkid_export_unescapes_and_identity() -> None:
    esp = filesystems.parse_blkid_export(layout_data("blkid-p2.txt"))
    assert esp["PART_ENTRY_NAME"] == "EFI System" and esp["TYPE"] == "vfat"
    assert filesystems.identity(esp) == {
        "type": "vfat",
        "uuid": "1234-ABCD",
        "label": "ESP",
        "version": "FAT32",
    }
    swap = filesystems.identity(filesystems.parse_blkid_export(layout_data("blkid-p4.txt")))
    assert swap == {
        "type": "swap",
        "uuid": "5a5a5a5a-0000-4000-8000-0000000000c0",
        "label": "swap0",
        "version": swap["version"],
    }


def test_dumpe2fs() -> None:
    f = filesystems.parse_dumpe2fs(layout_data("dumpe2fs-h-ext4.txt"))
    assert (
        f["features"][:3] == ["has_journal", "ext_attr", "resize_inode"] and "metadata_csum" in f["features"]
    )
    assert (f["block_size"], f["inode_size"], f["inode_count"], f["block_count"]) == (
        1024,
        256,
        65536,
        262144,
    )
    assert (f["inode_ratio"], f["reserved_blocks"]) == (4096, 13107)
    assert (f["uuid"], f["label"]) == ("3b1f2c4d-0000-4000-8000-0000000000b0", "boot")
    assert f["default_mount_options"] == ["user_xattr", "acl"]
    with pytest.raises(LayoutError, match="no superblock"):
        filesystems.parse_dumpe2fs("dumpe2fs: Bad magic number in super-block while trying to open /dev/sdb1")


def test_xfs_info() -> None:
    f = filesystems.parse_xfs_info(layout_data("xfs-db-info.txt"))
    assert f == {
        "crc": True,
        "reflink": True,
        "finobt": True,
        "rmapbt": False,
        "sparse_inodes": True,
        "bigtime": True,
        "inobtcount": True,
        "nrext64": False,
        "inode_size": 512,
        "ag_count": 4,
        "block_size": 4096,
        "data_blocks": 408832,
        "sector_size": 512,
        "log_internal": True,
        "log_size_bytes": 16384 * 4096,
    }
    with pytest.raises(LayoutError):
        filesystems.parse_xfs_info("xfs_info: /dev/sdb1 is not a mounted XFS filesystem")


def test_btrfs_subvolumes() -> None:
    subs = filesystems.parse_btrfs_subvolumes(layout_data("btrfs-subvolume-list.txt"))
    assert subs == [
        {"id": 256, "parent": 5, "uuid": "d00efa98-4558-8b47-ae36-d502edf0ebb9", "path": "@home"},
        {"id": 257, "parent": 256, "uuid": "5a4f0bea-2279-a540-a055-2649459866cf", "path": "@home/nested"},
    ]
    # -q -R add parent_uuid and received_uuid ("-" when none), a path may hold spaces.
    line = (
        "ID 258 gen 9 parent 5 top level 5 parent_uuid - received_uuid - "
        "uuid 11111111-2222-3333-4444-555555555555 path my snap"
    )
    assert filesystems.parse_btrfs_subvolumes(line)[0]["path"] == "my snap"
    with pytest.raises(LayoutError, match="unexpected line"):
        filesystems.parse_btrfs_subvolumes("ERROR: not a btrfs filesystem: /mnt")


def test_fstab_and_matching() -> None:
    text = (
        "# comment\n\n"
        "UUID=3B1F2C4D-0000-4000-8000-0000000000B0 /boot ext4 defaults 0 2\n"
        "LABEL=my\\040data /srv/my\\040data xfs noatime\n"
        "PARTUUID=aaaaaaaa-0000-4000-8000-000000000002\t/boot/efi\tvfat\tumask=0077\t0\t1\n"
        "/dev/vg0/swap none swap sw\n"
    )
    entries = filesystems.parse_fstab(text)
    assert [e["mountpoint"] for e in entries] == ["/boot", "/srv/my data", "/boot/efi", "none"]
    assert entries[1] == {
        "spec": "LABEL=my data",
        "mountpoint": "/srv/my data",
        "type": "xfs",
        "options": ["noatime"],
        "dump": 0,
        "pass": 0,
    }
    fs = {
        "uuid": "3b1f2c4d-0000-4000-8000-0000000000b0",
        "label": "my data",
        "partuuid": None,
        "partlabel": None,
    }
    assert filesystems.fstab_matches(entries[0]["spec"], fs, set())
    assert filesystems.fstab_matches(entries[1]["spec"], fs, set())
    assert not filesystems.fstab_matches(entries[2]["spec"], fs, set())
    assert filesystems.fstab_matches("/dev/vg0/swap", {}, {"/dev/vg0/swap"})
    assert not filesystems.fstab_matches("LABEL=My data", fs, set())  # labels are case-sensitive
    with pytest.raises(LayoutError, match="too few fields"):
        filesystems.parse_fstab("/dev/sda1 /\n")


def test_mountinfo() -> None:
    text = (
        "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
        "30 22 7:5 /@home /home rw shared:9 - btrfs /dev/loop0p6 rw,space_cache=v2\n"
        "31 22 0:27 / /mnt/a\\040b rw - tmpfs tmpfs rw\n"
    )
    mounts = filesystems.parse_mountinfo(text)
    assert [(m["dev"], m["root"], m["mountpoint"], m["type"]) for m in mounts] == [
        ("254:1", "/", "/", "ext4"),
        ("7:5", "/@home", "/home", "btrfs"),
        ("0:27", "/", "/mnt/a b", "tmpfs"),
    ]


# --- md and LVM ---------------------------------------------------------------------------------


def test_md_arrays_from_guest_captures() -> None:
    (array,) = volumes.md_arrays(
        storage_data("mdstat.txt"), {"md127": storage_data("mdadm-detail-export.txt")}
    )
    assert array == {
        "device": "/dev/md127",
        "level": "raid1",
        "metadata": "1.2",
        "uuid": "c80f4c13:f501963e:9c25eaf9:022b3557",
        "name": "sourcebox:rescue-test",
        "raid_devices": 2,
        "chunk_size_bytes": None,
        "members": [{"device": "/dev/vda", "role": "0"}, {"device": "/dev/vdb", "role": "1"}],
        "active": True,
    }
    (degraded,) = volumes.md_arrays(
        storage_data("mdstat-degraded.txt"), {"md127": storage_data("mdadm-detail-export-degraded.txt")}
    )
    assert degraded["members"] == [{"device": "/dev/vda", "role": "0"}] and degraded["raid_devices"] == 2


def test_md_chunk_size_and_members_without_detail() -> None:
    mdstat = (
        "Personalities : [raid6] [raid5] [raid4]\n"
        "md0 : active raid5 sdc1[3] sdb1[1] sda1[0]\n"
        "      2093056 blocks super 1.2 level 5, 512k chunk, algorithm 2 [3/3] [UUU]\n"
    )
    (array,) = volumes.md_arrays(mdstat, {})
    assert array["chunk_size_bytes"] == 512 * 1024 and array["level"] == "raid5"
    assert [m["device"] for m in array["members"]] == ["/dev/sdc1", "/dev/sdb1", "/dev/sda1"]


def test_lvm_summary_real_host_output() -> None:
    (vg,) = volumes.lvm_summary(
        layout_data("lvm-vgs.json"), layout_data("lvm-pvs.json"), layout_data("lvm-lvs.json")
    )
    assert (vg["name"], vg["uuid"], vg["extent_size_bytes"], vg["size_bytes"]) == (
        "vgcap",
        "oO9IPN-fBNs-QeMh-4Vp3-n3pB-uPQn-vJkVFE",
        4 * 1024**2,
        120 * 1024**2,
    )
    assert [(p["device"], p["size_bytes"]) for p in vg["pvs"]] == [
        ("/dev/loop0", 60 * 1024**2),
        ("/dev/loop1", 60 * 1024**2),
    ]
    assert vg["pvs"][0]["uuid"] == "51acgN-xP7x-7NpQ-eGRo-CawA-rdFv-Rf7ALU"
    assert [(lv["name"], lv["size_bytes"], lv["segtypes"], lv["refused"]) for lv in vg["lvs"]] == [
        ("lvroot", 8 * 1024**2, ["linear"], None),
        ("striped", 8 * 1024**2, ["striped"], None),
    ]
    assert volumes.refused_volumes([vg]) == []


def test_lvm_thin_pool_and_snapshot_real_lvs() -> None:
    """Real lvs output over metadata vgcfgrestore --force took (see tests/data/layout/README.md)."""
    (vg,) = volumes.lvm_summary(
        layout_data("lvm-vgs-thin-snapshot.json"),
        layout_data("lvm-pvs-thin-snapshot.json"),
        layout_data("lvm-lvs-thin-snapshot.json"),
    )
    by_name = {lv["name"]: lv for lv in vg["lvs"]}
    assert by_name["root"]["refused"] is None and by_name["root"]["attr"].startswith(
        "o"
    )  # an origin is extents
    assert by_name["thin"]["pool_lv"] == "pool" and by_name["snapcow"]["origin"] == "root"
    assert {lv["name"] for lv in vg["lvs"] if lv["hidden"]} == {"lvol0_pmspare", "pool_tdata", "pool_tmeta"}
    assert volumes.refused_volumes([vg]) == [
        {"kind": "lvm-lv", "name": "vgref/lvol0_pmspare", "reason": "pool or raid metadata"},
        {"kind": "lvm-lv", "name": "vgref/pool", "reason": "thin pool"},
        {"kind": "lvm-lv", "name": "vgref/pool_tdata", "reason": "thin pool data"},
        {"kind": "lvm-lv", "name": "vgref/pool_tmeta", "reason": "pool or raid metadata"},
        {"kind": "lvm-lv", "name": "vgref/snapcow", "reason": "snapshot"},
        {"kind": "lvm-lv", "name": "vgref/thin", "reason": "thin volume"},
    ]
    text = layout_data("vgcfgbackup-thin-snapshot.txt")
    assert volumes.vgcfgbackup_identity(text) == ("vgref", vg["uuid"])
    assert 'type = "thin-pool"' in text and 'type = "snapshot"' in text


def test_lvm_refused_types() -> None:
    (vg,) = volumes.lvm_summary(
        layout_data("lvm-vgs.json"), layout_data("lvm-pvs.json"), layout_data("lvm-lvs-refused.json")
    )
    by_name = {lv["name"]: lv for lv in vg["lvs"]}
    assert by_name["root"]["segtypes"] == ["linear", "striped"] and by_name["root"]["refused"] is None
    assert by_name["pool_tdata"]["hidden"]
    assert volumes.refused_volumes([vg]) == [
        {"kind": "lvm-lv", "name": "vgcap/pool", "reason": "thin pool"},
        {"kind": "lvm-lv", "name": "vgcap/pool_tdata", "reason": "thin pool data"},
        {"kind": "lvm-lv", "name": "vgcap/thin", "reason": "thin volume"},
        {"kind": "lvm-lv", "name": "vgcap/snap", "reason": "snapshot"},
        {"kind": "lvm-lv", "name": "vgcap/mirrored", "reason": "raid"},
        {"kind": "lvm-lv", "name": "vgcap/fast", "reason": "cache"},
        {"kind": "lvm-lv", "name": "vgcap/dedup", "reason": "virtual"},
    ]


def test_lvm_refusal_by_segtype_origin_and_pool() -> None:
    base = {"attr": "-wi-a-----", "origin": None, "pool_lv": None, "segtypes": ["linear"]}
    assert volumes.refusal(base) is None
    assert volumes.refusal({**base, "segtypes": ["linear", "mirror"]}) == "segment type mirror"
    assert volumes.refusal({**base, "origin": "root"}) == "snapshot"
    assert volumes.refusal({**base, "pool_lv": "vpool"}) == "uses pool vpool"


def test_lvm_fullreport_guest_capture_with_warnings() -> None:
    """The guest's fullreport (stderr warnings inside the JSON): pv and lv rows take the VG
    of their report part; its seg rows name no LV, so segtypes stay empty."""
    text = storage_data("lvm-fullreport-partial.json")
    groups = volumes.lvm_summary(text, text, text)
    assert [g["name"] for g in groups] == ["vgsolo", "vgtest"]
    assert [p["device"] for p in groups[0]["pvs"]] == ["/dev/vdb", "[unknown]"]
    assert [lv["name"] for lv in groups[0]["lvs"]] == ["lvloop", "lvone", "lvtwo"]
    assert groups[1]["lvs"][0]["size_bytes"] == 8388608


def test_vgcfgbackup_identity() -> None:
    text = layout_data("vgcfgbackup-vgcap.txt")
    assert volumes.vgcfgbackup_identity(text) == ("vgcap", "oO9IPN-fBNs-QeMh-4Vp3-n3pB-uPQn-vJkVFE")
    with pytest.raises(LayoutError, match="not LVM text metadata"):
        volumes.vgcfgbackup_identity("garbage")


# --- boot loader --------------------------------------------------------------------------------


def test_boot_sector_and_gap() -> None:
    empty = bytes(510) + b"\x55\xaa"
    assert bootloader.boot_sector(empty)["grub"] is False and bootloader.boot_sector(empty)["code_empty"]
    grub = b"\xeb\x63\x90" + bytes(380) + b"GRUB \0Geom\0Hard Disk\0Read\0 Error\r\n" + bytes(512)
    sector = grub[:440] + bytes(70) + b"\x55\xaa"
    info = bootloader.boot_sector(sector)
    assert info["grub"] and info["signature"] and info["sha256"] == hashlib.sha256(sector).hexdigest()
    with pytest.raises(LayoutError):
        bootloader.boot_sector(b"short")
    gap = bootloader.gap_record(b"core" + bytes(1020), "sda")
    assert gap == {
        "offset_bytes": 512,
        "size_bytes": 1024,
        "sha256": hashlib.sha256(b"core" + bytes(1020)).hexdigest(),
        "empty": False,
        "file": "disk-sda-gap.bin",
    }
    assert bootloader.gap_file_name("cciss/c0d0") == "disk-cciss_c0d0-gap.bin"


def test_efibootmgr_17() -> None:
    nvram = bootloader.parse_efibootmgr(layout_data("efibootmgr-v.txt"))
    assert (nvram["current"], nvram["order"]) == ("0001", ["0001", "0000", "0002"])
    debian = nvram["entries"][1]
    assert (debian["number"], debian["active"], debian["label"], debian["partition"]) == (
        "0001",
        True,
        "debian",
        2,
    )
    assert debian["partuuid"] == "aaaaaaaa-0000-4000-8000-000000000002"
    assert debian["loader"] == "\\EFI\\debian\\shimx64.efi"
    assert (
        nvram["entries"][0]["loader"] is None and nvram["entries"][2]["label"] == "UEFI QEMU HARDDISK QM00001"
    )


def test_efibootmgr_18_path_without_file_node() -> None:
    text = (
        "BootCurrent: 0003\nBootOrder: 0003\n"
        "Boot0003* ubuntu\tHD(1,GPT,0DA1C0DE-0000-4000-8000-000000000001,0x800,0x100000)"
        "/\\EFI\\ubuntu\\shimx64.efi\n"
    )
    (entry,) = bootloader.parse_efibootmgr(text)["entries"]
    assert (
        entry["loader"] == "\\EFI\\ubuntu\\shimx64.efi"
        and entry["partuuid"] == "0da1c0de-0000-4000-8000-000000000001"
    )
    with pytest.raises(LayoutError, match="no boot entries"):
        bootloader.parse_efibootmgr("EFI variables are not supported on this system.")
