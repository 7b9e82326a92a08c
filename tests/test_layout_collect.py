"""The layout collector with the real tools on a loop-mounted 2 GiB sparse disk image: GPT with
a BIOS boot partition (GRUB's diskboot.img in it), an ESP (vfat; unmounted, the host kernel
has no vfat), /boot (ext4, unmounted), swap, data (xfs, mounted) and a mounted btrfs with
subvolumes, GRUB's boot.img in the MBR. Needs root (loop devices, mounts) and grub-pc-bin.
md and LVM: the host kernel has neither, so they are covered on fixtures in
test_layout_parsers.py; here `lvm` runs for real and finds no VG."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.capture.layout import LAYOUT_FORMAT, LAYOUT_VERSION
from initrd_composer.capture.layout.collect import HostPaths, collect_layout, run_tool
from initrd_composer.capture.layout.document import dump_layout, load_layout
from initrd_composer.runner import run

pytestmark = pytest.mark.root

DATA = Path(__file__).resolve().parent / "data" / "layout"
GRUB_BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")  # Debian package grub-pc-bin
TOOLS = (
    "sfdisk",
    "lsblk",
    "blkid",
    "losetup",
    "partx",
    "mkfs.vfat",
    "mkfs.ext4",
    "mkswap",
    "mkfs.xfs",
    "mkfs.btrfs",
    "btrfs",
    "dumpe2fs",
    "xfs_info",
    "xfs_db",
    "lvm",
    "mount",
    "umount",
)

GIB = 1024**3
ESP_VOLUME_ID = "1234ABCD"
# Known but per-process: xfs and btrfs refuse a second filesystem with the same UUID on the
# host, which parallel workers (pytest -n) would otherwise make.
_RUN = uuid.uuid4().hex[:12]
BOOT_UUID = f"3b1f2c4d-0000-4000-8000-{_RUN}"
SWAP_UUID = f"5a5a5a5a-0000-4000-8000-{_RUN}"
XFS_UUID = f"7e7e7e7e-0000-4000-8000-{_RUN}"
BTRFS_UUID = f"9b9b9b9b-0000-4000-8000-{_RUN}"
PARTUUID = "AAAAAAAA-0000-4000-8000-00000000000{}"
BIOS, ESP, LINUX, SWAP = (
    "21686148-6449-6E6F-744E-656564454649",
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
)
# (start, size in sectors, type, name); the last one takes what is left.
PARTS = [
    (2048, 2048, BIOS, "bios"),
    (4096, 131072, ESP, "EFI System"),
    (135168, 524288, LINUX, "boot"),
    (659456, 262144, SWAP, "swap"),
    (921600, 2097152, LINUX, "data"),
    (3018752, 1175519, LINUX, "btrfs"),
]


@dataclass
class Disk:
    image: Path
    loop: str
    tmp: Path
    mounts: dict[str, Path]

    def part(self, n: int) -> str:
        return f"{self.loop}p{n}"


def _sfdisk_script() -> str:
    lines = ["label: gpt", "label-id: 11111111-2222-3333-4444-555555555555"]
    for i, (start, size, ptype, name) in enumerate(PARTS, 1):
        attrs = ', attrs="LegacyBIOSBootable"' if name == "boot" else ""
        lines.append(
            f'start={start}, size={size}, type={ptype}, name="{name}", uuid={PARTUUID.format(i)}{attrs}'
        )
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Disk]:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mounts (marker: root)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, (
        f"install the tools: {missing} (util-linux, dosfstools, e2fsprogs, xfsprogs, btrfs-progs, lvm2)"
    )
    assert GRUB_BOOT_IMG.is_file(), "install grub-pc-bin for GRUB's boot.img"
    tmp = tmp_path_factory.mktemp("layout")
    image = tmp / "disk.img"
    with open(image, "wb") as f:
        f.truncate(2 * GIB)
    run(["sfdisk", "-q", str(image)], input_bytes=_sfdisk_script().encode())
    # GRUB's boot.img code (the first 440 bytes) in the MBR, as grub-install puts it there.
    with open(image, "r+b") as f:
        f.write(GRUB_BOOT_IMG.read_bytes()[:440])
    loop = run(["losetup", "-f", "--show", str(image)]).stdout.decode().strip()
    mounts: dict[str, Path] = {}
    d = Disk(image, loop, tmp, mounts)
    try:
        # GRUB's core.img sits in the BIOS boot partition; diskboot.img is its first sector.
        with open(image, "r+b") as f:
            f.seek(2048 * 512)
            f.write(GRUB_BOOT_IMG.with_name("diskboot.img").read_bytes())
        run(["partx", "-a", loop])
        run(["mkfs.vfat", "-F", "32", "-i", ESP_VOLUME_ID, "-n", "ESP", d.part(2)])
        run(["mkfs.ext4", "-q", "-F", "-L", "boot", "-U", BOOT_UUID, "-N", "4096", d.part(3)])
        run(["mkswap", "-L", "swap0", "-U", SWAP_UUID, d.part(4)])
        run(["mkfs.xfs", "-q", "-f", "-L", "data", "-m", f"uuid={XFS_UUID},reflink=1", d.part(5)])
        run(["mkfs.btrfs", "-q", "-f", "-L", "pool", "-U", BTRFS_UUID, d.part(6)])
        # The host kernel has no vfat: the ESP stays unmounted (its loaders come from NVRAM then).
        for n, name in ((5, "data"), (6, "btrfs")):
            target = tmp / "mnt" / name
            target.mkdir(parents=True)
            run(["mount", d.part(n), str(target)])
            mounts[name] = target
        (mounts["data"] / "payload").write_bytes(os.urandom(3 * 1024 * 1024))
        run(["btrfs", "subvolume", "create", str(mounts["btrfs"] / "@home")])
        run(["btrfs", "subvolume", "create", str(mounts["btrfs"] / "@home" / "nested")])
        os.sync()
        yield d
    finally:
        for target in reversed(list(mounts.values())):
            run(["umount", str(target)], check=False)
        run(["partx", "-d", loop], check=False)
        run(["losetup", "-d", loop], check=False)


def _fstab(d: Disk) -> str:
    return "\n".join(
        [
            "# /etc/fstab: static file system information.",
            f"UUID={BTRFS_UUID.upper()} /            btrfs subvol=@home,noatime 0 0",
            f"UUID={BOOT_UUID}  /boot         ext4  defaults        0 2",
            f"PARTUUID={PARTUUID.format(2).lower()} /boot/efi vfat umask=0077 0 1",
            "LABEL=data  /srv\\040data   xfs   noatime,nofail",
            f"{d.part(4)} none swap sw 0 0",
            "tmpfs /tmp tmpfs size=1G 0 0",
            "",
        ]
    )


@pytest.fixture(scope="module")
def layout(disk: Disk) -> dict[str, Any]:
    root = disk.tmp / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "fstab").write_text(_fstab(disk))
    efi = disk.tmp / "sys-firmware-efi"
    efi.mkdir()
    gaps = disk.tmp / "set"
    gaps.mkdir()

    def runner(argv: list[str]) -> str:
        # The host boots without UEFI variables: efibootmgr answers from a fixture, all else is real.
        if argv[0] == "efibootmgr":
            return (DATA / "efibootmgr-v.txt").read_text()
        return run_tool(argv)

    doc = collect_layout(
        [disk.loop], runner=runner, paths=HostPaths(source_root=root, efi_firmware=efi), gap_dir=gaps
    )
    return load_layout(dump_layout(doc))  # what a restore reads back


def _fs(layout: dict[str, Any], device: str) -> dict[str, Any]:
    found = [fs for fs in layout["filesystems"] if fs["device"] == device]
    assert len(found) == 1, device
    return found[0]  # type: ignore[no-any-return]


def test_document_header_and_sorted_stable_json(layout: dict[str, Any]) -> None:
    assert layout["format"] == LAYOUT_FORMAT and layout["version"] == LAYOUT_VERSION
    text = dump_layout(layout)
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert layout["md_arrays"] == [] and layout["lvm"] == {"volume_groups": []} and layout["refused"] == []


def test_disk_and_partitions(disk: Disk, layout: dict[str, Any]) -> None:
    (d,) = layout["disks"]
    assert d["name"] == Path(disk.loop).name and d["path"] == disk.loop and not d["image"]
    assert d["size_bytes"] == 2 * GIB
    assert (d["logical_sector_size"], d["physical_sector_size"]) == (512, 512)
    assert d["model"] is None and d["serial"] is None and d["wwn"] is None  # a loop device has none
    table = d["partition_table"]
    assert table["label"] == "gpt" and table["id"] == "11111111-2222-3333-4444-555555555555"
    assert table["sector_size"] == 512
    got = [(p["start"], p["size"], p["type"], p["name"]) for p in table["partitions"]]
    assert got == PARTS
    assert [p["uuid"] for p in table["partitions"]] == [PARTUUID.format(i) for i in range(1, 7)]
    assert [p["number"] for p in table["partitions"]] == [1, 2, 3, 4, 5, 6]
    assert [p["node"] for p in table["partitions"]] == [disk.part(i) for i in range(1, 7)]
    assert [p["bios_boot"] for p in table["partitions"]] == [True, False, False, False, False, False]
    assert [p["esp"] for p in table["partitions"]] == [False, True, False, False, False, False]
    assert table["partitions"][2]["attrs"] == "LegacyBIOSBootable"
    assert [p["content"] for p in table["partitions"]] == [None, "vfat", "ext4", "swap", "xfs", "btrfs"]


def test_boot_sector_and_gap(disk: Disk, layout: dict[str, Any]) -> None:
    (d,) = layout["disks"]
    raw = disk.image.read_bytes()[: 2048 * 512]
    assert d["boot_sector"]["grub"] and d["boot_sector"]["signature"]
    assert d["boot_sector"]["sha256"] == hashlib.sha256(raw[:512]).hexdigest()
    gap = d["gap"]
    assert (gap["offset_bytes"], gap["size_bytes"]) == (512, 2048 * 512 - 512)
    assert gap["sha256"] == hashlib.sha256(raw[512:]).hexdigest() and not gap["empty"]  # the GPT is in it
    assert gap["file"] == f"disk-{Path(disk.loop).name}-gap.bin"
    assert (disk.tmp / "set" / gap["file"]).read_bytes() == raw[512:]
    bios = d["partition_table"]["partitions"][0]["raw"]
    core = disk.image.read_bytes()[2048 * 512 : 4096 * 512]
    assert bios == {
        "size_bytes": 2048 * 512,
        "sha256": hashlib.sha256(core).hexdigest(),
        "empty": False,
        "file": f"disk-{Path(disk.loop).name}-part1-bios-boot.bin",
    }
    assert (disk.tmp / "set" / bios["file"]).read_bytes() == core
    assert [p["raw"] for p in d["partition_table"]["partitions"][1:]] == [None] * 5


def test_vfat_esp(disk: Disk, layout: dict[str, Any]) -> None:
    fs = _fs(layout, disk.part(2))
    assert (fs["type"], fs["uuid"], fs["label"], fs["version"]) == ("vfat", "1234-ABCD", "ESP", "FAT32")
    assert fs["features"] == {"fat_size": "FAT32"} and fs["esp"]
    assert fs["partuuid"] == PARTUUID.format(2).lower() and fs["partlabel"] == "EFI System"
    assert fs["mountpoint"] is None
    assert fs["fstab"] == {
        "spec": f"PARTUUID={PARTUUID.format(2).lower()}",
        "mountpoint": "/boot/efi",
        "type": "vfat",
        "options": ["umask=0077"],
        "dump": 0,
        "pass": 1,
    }


def test_ext4_boot_unmounted(disk: Disk, layout: dict[str, Any]) -> None:
    fs = _fs(layout, disk.part(3))
    assert (fs["type"], fs["uuid"], fs["label"]) == ("ext4", BOOT_UUID, "boot")
    assert fs["mountpoint"] is None and fs["used_bytes"] is None
    f = fs["features"]
    assert {"has_journal", "extent", "64bit", "metadata_csum", "flex_bg"} <= set(f["features"])
    assert f["inode_count"] == 4096 and f["block_size"] in (1024, 4096) and f["inode_size"] == 256
    assert f["block_count"] * f["block_size"] == 524288 * 512
    assert f["inode_ratio"] == 524288 * 512 // 4096
    assert f["reserved_blocks"] == f["block_count"] * 5 // 100  # mke2fs's default 5 %
    assert fs["fstab"]["mountpoint"] == "/boot" and fs["fstab"]["pass"] == 2


def test_swap_by_device_path_in_fstab(disk: Disk, layout: dict[str, Any]) -> None:
    fs = _fs(layout, disk.part(4))
    assert (fs["type"], fs["uuid"], fs["label"], fs["features"]) == ("swap", SWAP_UUID, "swap0", None)
    assert fs["fstab"]["spec"] == disk.part(4) and fs["fstab"]["options"] == ["sw"]


def test_xfs_mounted(disk: Disk, layout: dict[str, Any]) -> None:
    fs = _fs(layout, disk.part(5))
    assert (fs["type"], fs["uuid"], fs["label"]) == ("xfs", XFS_UUID, "data")
    assert fs["mountpoint"] == str(disk.mounts["data"])
    sv = os.statvfs(disk.mounts["data"])
    assert fs["size_bytes"] == sv.f_blocks * sv.f_frsize
    assert fs["used_bytes"] >= 3 * 1024 * 1024
    f = fs["features"]
    assert (
        f["crc"] and f["reflink"] and f["finobt"] and f["sparse_inodes"] and f["bigtime"] and f["inobtcount"]
    )
    assert (
        f["rmapbt"] is False
        and f["block_size"] == 4096
        and f["sector_size"] == 512
        and f["inode_size"] == 512
    )
    assert f["data_blocks"] * 4096 == 2097152 * 512
    assert f["log_internal"] and f["log_size_bytes"] > 0
    assert fs["fstab"]["mountpoint"] == "/srv data" and fs["fstab"]["options"] == ["noatime", "nofail"]


def test_btrfs_subvolumes(disk: Disk, layout: dict[str, Any]) -> None:
    fs = _fs(layout, disk.part(6))
    assert (fs["type"], fs["uuid"], fs["label"]) == ("btrfs", BTRFS_UUID, "pool")
    subs = fs["features"]["subvolumes"]
    assert [(s["path"], s["parent"]) for s in subs] == [("@home", 5), ("@home/nested", subs[0]["id"])]
    assert all(len(s["uuid"]) == 36 for s in subs)
    assert fs["fstab"]["options"] == ["subvol=@home", "noatime"]  # UUID= matched case-insensitively


def test_fstab_entries_name_their_device(disk: Disk, layout: dict[str, Any]) -> None:
    devices = [e["device"] for e in layout["fstab"]]
    assert devices == [disk.part(6), disk.part(3), disk.part(2), disk.part(5), disk.part(4), None]
    assert layout["fstab"][-1]["spec"] == "tmpfs"


def test_bootloader(disk: Disk, layout: dict[str, Any]) -> None:
    boot = layout["bootloader"]
    assert boot["bios_grub_disks"] == [Path(disk.loop).name]
    assert boot["bios_boot_partitions"] == [disk.part(1)]
    uefi = boot["uefi"]
    assert uefi["booted_uefi"] and uefi["esps"] == [disk.part(2)]
    assert uefi["loaders"] == []  # the ESP is not mounted
    assert uefi["nvram"]["current"] == "0001"
    (entry,) = [e for e in uefi["nvram"]["entries"] if e["partuuid"] == PARTUUID.format(2).lower()]
    assert entry["loader"] == "\\EFI\\debian\\shimx64.efi"


def test_image_file_without_loop_device(disk: Disk) -> None:
    """A --disk IMAGE file: the table, boot sector, gap and filesystem identity are read from
    the file (blkid at each partition's offset); features need a device and stay null."""
    doc = collect_layout([str(disk.image)], paths=HostPaths())
    (d,) = doc["disks"]
    assert d["image"] and d["size_bytes"] == 2 * GIB and d["boot_sector"]["grub"]
    assert [p["start"] for p in d["partition_table"]["partitions"]] == [p[0] for p in PARTS]
    kinds = {fs["type"]: fs for fs in doc["filesystems"]}
    assert sorted(kinds) == ["btrfs", "ext4", "swap", "vfat", "xfs"]
    assert kinds["ext4"]["uuid"] == BOOT_UUID and kinds["ext4"]["features"] is None
    assert kinds["ext4"]["image_offset_bytes"] == 135168 * 512
    assert doc["fstab"] is None and doc["md_arrays"] == [] and doc["lvm"]["volume_groups"] == []


def test_dos_image_with_grub_core_in_the_gap(tmp_path: Path) -> None:
    """An MBR disk as grub-install leaves it: boot.img in the MBR, core.img in the sectors
    before the first partition (here GRUB's diskboot.img, core.img's first sector). Real
    sfdisk, mke2fs (at an offset) and blkid on an image file: no loop device, no root."""
    missing = [t for t in ("sfdisk", "blkid", "mkfs.ext4") if shutil.which(t) is None]
    assert not missing, f"install {missing}"
    core = GRUB_BOOT_IMG.with_name("diskboot.img").read_bytes()
    image = tmp_path / "mbr.img"
    with open(image, "wb") as f:
        f.truncate(64 * 1024**2)
    script = "label: dos\nlabel-id: 0x0badcafe\nstart=2048, size=65536, type=83, bootable\n"
    run(["sfdisk", "-q", str(image)], input_bytes=script.encode())
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "root",
            "-U",
            BOOT_UUID,
            "-E",
            f"offset={2048 * 512}",
            str(image),
            "32M",
        ]
    )
    with open(image, "r+b") as f:
        f.write(GRUB_BOOT_IMG.read_bytes()[:440])
        f.seek(512)
        f.write(core)
    sets = tmp_path / "set"
    sets.mkdir()
    doc = load_layout(dump_layout(collect_layout([str(image)], paths=HostPaths(), gap_dir=sets)))
    (d,) = doc["disks"]
    assert d["partition_table"]["label"] == "dos" and d["partition_table"]["id"] == "0x0badcafe"
    (p,) = d["partition_table"]["partitions"]
    assert (p["start"], p["size"], p["type"], p["bootable"], p["content"]) == (
        2048,
        65536,
        "83",
        True,
        "ext4",
    )
    assert d["boot_sector"]["grub"] and doc["bootloader"]["bios_grub_disks"] == ["mbr.img"]
    gap_bytes = core + bytes(2047 * 512 - len(core))
    assert (
        d["gap"]["size_bytes"] == 2047 * 512 and d["gap"]["sha256"] == hashlib.sha256(gap_bytes).hexdigest()
    )
    assert (sets / "disk-mbr.img-gap.bin").read_bytes() == gap_bytes
    (fs,) = doc["filesystems"]
    assert (fs["type"], fs["uuid"], fs["label"], fs["image_offset_bytes"]) == (
        "ext4",
        BOOT_UUID,
        "root",
        2048 * 512,
    )


def test_a_non_ascii_label_is_recorded_as_it_is(tmp_path: Path) -> None:
    """blkid -o export prints such a label in M- notation; the collector asks again for it."""
    from initrd_composer.capture.layout.collect import _Context, _probe, read_device_bytes  # noqa: PLC0415

    image = tmp_path / "xfs.img"
    run(["mkfs.xfs", "-q", "-f", "-L", "Bööt", "-d", f"file,name={image},size=300m"])
    assert "M-" in run(["blkid", "-p", "-o", "export", image]).stdout.decode()  # the mangling, for real
    ctx = _Context(run_tool, read_device_bytes, HostPaths())
    probe = _probe(ctx, ["blkid", "-p", "-o", "export", str(image)])
    assert probe["LABEL"] == "Bööt" and probe["TYPE"] == "xfs"
