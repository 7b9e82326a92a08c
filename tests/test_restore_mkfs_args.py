"""The mkfs commands of saved filesystems (boot/restore/mkfs_args.py), from records the
capture's own parsers make of the real tools' output in tests/data/layout; then each command
run for real on a sparse file (mkfs needs no root on a file) and the result read back with
blkid, dumpe2fs and xfs_db through the same parsers, so what the restore makes is what was
saved. The dry runs (preflight) are run for real too, and refuse a feature mke2fs lacks."""

from __future__ import annotations

import copy
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.mkfs_args import (
    btrfs_subvolumes,
    explain_preflight_failure,
    mkfs_argv,
    preflight_argv,
)
from initrd_composer.capture.layout import filesystems
from initrd_composer.runner import run
from tests.layout_fixtures import layout_data

MIB = 1 << 20
EXT_FEATURES = ("has_journal ext_attr resize_inode dir_index filetype extent 64bit flex_bg sparse_super "
                "large_file huge_file dir_nlink extra_isize metadata_csum").split()  # fmt: skip
# xfs and btrfs refuse to make a filesystem with a UUID already on the host: one per run.
_RUN = uuid.uuid4().hex[:12]


def _record(blkid: str, mount: str | None, features: dict[str, Any] | None) -> dict[str, Any]:
    probe = filesystems.parse_blkid_export(layout_data(blkid))
    return {**filesystems.identity(probe), "device": probe["DEVNAME"], "mountpoint": mount,
            "features": features, "fstab": None, "used_bytes": None, "size_bytes": None}  # fmt: skip


def ext4() -> dict[str, Any]:
    return _record("blkid-p3.txt", "/boot", filesystems.parse_dumpe2fs(layout_data("dumpe2fs-h-ext4.txt")))


def xfs() -> dict[str, Any]:
    fs = _record("blkid-p5.txt", "/srv", filesystems.parse_xfs_info(layout_data("xfs-db-info.txt")))
    return {**fs, "uuid": f"7e7e7e7e-0000-4000-8000-{_RUN}"}


def vfat() -> dict[str, Any]:
    fs = _record("blkid-p2.txt", "/boot/efi", None)
    return {**fs, "features": {"fat_size": fs["version"]}}


def swap() -> dict[str, Any]:
    return _record("blkid-p4.txt", None, None)


def btrfs() -> dict[str, Any]:
    subvolumes = filesystems.parse_btrfs_subvolumes(layout_data("btrfs-subvolume-list.txt"))
    return {"device": "/dev/loop0p6", "type": "btrfs", "uuid": f"9b9b9b9b-0000-4000-8000-{_RUN}",
            "label": "pool", "version": None, "mountpoint": "/pool", "fstab": None,
            "features": {"subvolumes": subvolumes[::-1]}}  # fmt: skip


# --- the argv -----------------------------------------------------------------------------------


def test_ext4_gets_exactly_its_saved_features_and_geometry() -> None:
    assert mkfs_argv(ext4(), "/dev/nvme0n1p3") == [
        "mke2fs", "-F", "-t", "ext4", "-O", "none," + ",".join(EXT_FEATURES), "-b", "1024", "-I", "256",
        "-i", "4096", "-m", "5", "-U", "3b1f2c4d-0000-4000-8000-0000000000b0", "-L", "boot", "/dev/nvme0n1p3",
    ]  # fmt: skip


def test_ext_state_flags_are_left_out_and_a_4k_disk_raises_the_block_size() -> None:
    fs = ext4()
    fs["features"]["features"] += ["needs_recovery", "orphan_present"]
    argv = mkfs_argv(fs, "/dev/sdb1", sector=4096)
    assert argv[argv.index("-O") + 1] == "none," + ",".join(EXT_FEATURES)
    assert (argv[argv.index("-b") + 1], argv[argv.index("-i") + 1]) == ("4096", "4096")
    bare = {**ext4(), "features": None, "type": "ext3"}
    assert mkfs_argv(bare, "/dev/sdb1") == ["mke2fs", "-F", "-t", "ext3", "-U", bare["uuid"], "-L", "boot",
                                            "/dev/sdb1"]  # fmt: skip


def test_xfs_vfat_swap_and_btrfs() -> None:
    fs = xfs()
    assert mkfs_argv(fs, "/dev/vg0/srv") == [
        "mkfs.xfs", "-f", "-m", f"uuid={fs['uuid']},crc=1,finobt=1,rmapbt=0,reflink=1,inobtcount=1,bigtime=1",
        "-i", "size=512,sparse=1,nrext64=0", "-b", "size=4096", "-s", "size=512", "-L", "data",
        "/dev/vg0/srv",
    ]  # fmt: skip
    assert mkfs_argv(fs, "/dev/sdb1", sector=4096)[-5:-3] == ["-s", "size=4096"]
    assert mkfs_argv(vfat(), "/dev/sda1") == [
        "mkfs.vfat", "-F", "32", "-i", "1234ABCD", "-n", "ESP", "/dev/sda1"]  # fmt: skip
    assert mkfs_argv(swap(), "/dev/sda2") == [
        "mkswap", "-U", "5a5a5a5a-0000-4000-8000-0000000000c0", "-L", "swap0", "/dev/sda2"]  # fmt: skip
    assert mkfs_argv(btrfs(), "/dev/sda3") == [
        "mkfs.btrfs", "-f", "-U", btrfs()["uuid"], "-L", "pool", "/dev/sda3"]  # fmt: skip


def test_labels_stay_one_argv_item() -> None:
    for make, option in ((ext4, "-L"), (xfs, "-L"), (vfat, "-n"), (swap, "-L"), (btrfs, "-L")):
        fs = make()
        fs["label"] = "my données $x"
        if fs["type"] == "ext4":
            fs["features"]["label"] = fs["label"]
        argv = mkfs_argv(fs, "/dev/sdz9")
        assert argv[argv.index(option) + 1] == "my données $x"


def test_btrfs_subvolumes_parents_first() -> None:
    assert btrfs_subvolumes(btrfs()) == ["@home", "@home/nested"]
    assert btrfs_subvolumes({**btrfs(), "features": {"subvolumes": None}}) == []


def test_what_no_mkfs_makes_is_refused() -> None:
    with pytest.raises(RestoreRefused, match=r"/dev/sdb1 \(/data\) holds a ntfs filesystem"):
        mkfs_argv({"device": "/dev/sdb1", "type": "ntfs", "mountpoint": "/data"}, "/dev/sdc1")


def test_preflight_is_a_dry_run_where_the_tool_has_one() -> None:
    assert preflight_argv(ext4(), "/run/scratch")[:3] == ["mke2fs", "-n", "-F"]
    assert preflight_argv(xfs(), "/run/scratch")[:3] == ["mkfs.xfs", "-N", "-f"]
    assert preflight_argv(vfat(), "/run/scratch") == mkfs_argv(vfat(), "/run/scratch")
    assert preflight_argv(ext4(), "/run/scratch")[-1] == "/run/scratch"


def test_failures_name_the_feature() -> None:
    fs = ext4()
    fs["features"]["features"].append("frobnicate")
    out = "mke2fs 1.47.0 (5-Feb-2023)\nInvalid filesystem option set: none,has_journal,frobnicate\n"
    refused = explain_preflight_failure(fs, out)
    assert "mke2fs cannot recreate /dev/loop0p3 (/boot)'s ext4 filesystem: it does not accept frobnicate" in (
        refused.message)  # fmt: skip
    assert "e2fsprogs" in refused.hint and "\n" not in refused.message
    old = explain_preflight_failure(ext4(), "mke2fs 1.42.9\nSetting filesystem feature 'metadata_csum' not "
                                    "supported.\n")  # fmt: skip
    assert "does not accept metadata_csum" in old.message
    # An mkfs.xfs older than nrext64 (xfsprogs 5.19) answers with its usage text.
    usage = "unknown option -i nrext64=0\nUsage: mkfs.xfs\n/* blocksize */\t\t[-b size=num]\n"
    assert "mkfs.xfs cannot recreate /dev/loop0p5 (/srv)'s xfs filesystem: it does not accept nrext64" in (
        explain_preflight_failure(xfs(), usage).message)  # fmt: skip
    vfat_out = "mkfs.fat 4.2 (2021-01-31)\nmkfs.vfat: Labels with characters below 0x20 are not allowed\n"
    message = explain_preflight_failure(vfat(), vfat_out).message
    assert message.endswith("vfat filesystem: mkfs.vfat: Labels with characters below 0x20 are not allowed")


# --- the real tools --------------------------------------------------------------------------------


def _sparse(tmp_path: Path, name: str, mib: int) -> str:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(mib * MIB)
    return str(path)


def _has_data(path: str) -> bool:
    """Whether anything was written into the sparse file (it has a data extent)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        assert exc.errno == errno.ENXIO  # no data after offset 0: all hole
        return False
    finally:
        os.close(fd)
    return True


def _make(fs: dict[str, Any], image: str) -> dict[str, str]:
    tool = mkfs_argv(fs, image)[0]
    assert shutil.which(tool), f"install the package with {tool}"
    run(mkfs_argv(fs, image))
    return filesystems.parse_blkid_export(run(["blkid", "-p", "-o", "export", image]).stdout.decode())


def _raw_label(image: str) -> str:
    """blkid's export mangles bytes outside ASCII (M-); its value output does not."""
    return run(["blkid", "-p", "-o", "value", "-s", "LABEL", image]).stdout.decode().rstrip("\n")


@pytest.mark.parametrize(
    "drop", [(), ("huge_file", "dir_nlink", "metadata_csum", "64bit")], ids=["saved", "fewer"]
)
def test_real_mke2fs_makes_the_saved_ext4(tmp_path: Path, drop: tuple[str, ...]) -> None:
    """The features the rescue's mke2fs.conf turns on for ext4 are off when the saved one had
    them off."""
    fs = ext4()
    saved = fs["features"]
    saved["features"] = [f for f in saved["features"] if f not in drop]
    saved["label"] = fs["label"] = "Bööt Disk"
    image = _sparse(tmp_path, "ext4.img", 256)
    probe = _make(fs, image)
    assert (probe["TYPE"], probe["UUID"]) == ("ext4", fs["uuid"])
    back = filesystems.parse_dumpe2fs(run(["dumpe2fs", "-h", image]).stdout.decode())
    assert sorted(back["features"]) == sorted(saved["features"])
    keys = ("block_size", "inode_size", "inode_count", "inode_ratio", "reserved_blocks", "uuid", "label")
    assert {k: back[k] for k in keys} == {k: saved[k] for k in keys}
    assert _raw_label(image) == "Bööt Disk"


def test_real_mke2fs_makes_ext2_and_ext3(tmp_path: Path) -> None:
    base = ["ext_attr", "resize_inode", "dir_index", "filetype", "sparse_super", "large_file"]
    for kind, extra in (("ext2", []), ("ext3", ["has_journal"])):
        fs = copy.deepcopy(ext4())
        fs["type"], fs["features"]["features"] = kind, base + extra
        image = _sparse(tmp_path, f"{kind}.img", 64)
        assert _make(fs, image)["TYPE"] == kind
        back = filesystems.parse_dumpe2fs(run(["dumpe2fs", "-h", image]).stdout.decode())
        assert sorted(back["features"]) == sorted(base + extra)


@pytest.mark.parametrize("v4", [False, True], ids=["v5", "v4-crc0"])
def test_real_mkfs_xfs_makes_the_saved_xfs(tmp_path: Path, v4: bool) -> None:
    fs = xfs()
    fs["label"] = "data vol"
    if v4:  # a v4 filesystem as xfs_db reports it: no v5 features, 256-byte inodes
        fs["features"].update(crc=False, finobt=False, reflink=False, rmapbt=False, bigtime=False,
                              inobtcount=False, sparse_inodes=False, inode_size=256)  # fmt: skip
    image = _sparse(tmp_path, "xfs.img", 512)  # mkfs.xfs makes nothing under 300 MB
    probe = _make(fs, image)
    assert (probe["TYPE"], probe["UUID"], probe["LABEL"]) == ("xfs", fs["uuid"], "data vol")
    back = filesystems.parse_xfs_info(run(["xfs_db", "-r", "-c", "info", image]).stdout.decode())
    keys = ("crc", "reflink", "finobt", "rmapbt", "sparse_inodes", "bigtime", "inobtcount", "nrext64",
            "inode_size", "block_size", "sector_size")  # fmt: skip
    assert {k: back[k] for k in keys} == {k: fs["features"][k] for k in keys}


def test_real_vfat_swap_and_btrfs(tmp_path: Path) -> None:
    esp = {**vfat(), "label": "EFI SYS"}
    probe = _make(esp, _sparse(tmp_path, "esp.img", 64))
    got = (probe["TYPE"], probe["UUID"], probe["LABEL"], probe["VERSION"])
    assert got == ("vfat", "1234-ABCD", "EFI SYS", "FAT32")
    image = _sparse(tmp_path, "swap.img", 64)
    probe = _make({**swap(), "label": "swap é"}, image)
    assert (probe["TYPE"], probe["UUID"], _raw_label(image)) == ("swap", swap()["uuid"], "swap é")
    probe = _make(btrfs(), _sparse(tmp_path, "btrfs.img", 256))
    assert (probe["TYPE"], probe["UUID"], probe["LABEL"]) == ("btrfs", btrfs()["uuid"], "pool")


def test_real_preflight_accepts_the_saved_and_writes_no_ext_or_xfs(tmp_path: Path) -> None:
    for name, fs, mib in (("ext4", ext4(), 256), ("xfs", xfs(), 512), ("vfat", vfat(), 64),
                          ("swap", swap(), 64), ("btrfs", btrfs(), 256)):  # fmt: skip
        scratch = _sparse(tmp_path, f"{name}.scratch", mib)
        proc = run(preflight_argv(fs, scratch), check=False)
        assert proc.returncode == 0, (name, proc.stderr)
        if name in ("ext4", "xfs"):
            assert not _has_data(scratch), f"{name}'s dry run wrote"
        else:
            assert _has_data(scratch)


def test_real_preflight_refuses_a_feature_mke2fs_lacks(tmp_path: Path) -> None:
    fs = ext4()
    fs["features"]["features"].append("frobnicate")
    proc = run(preflight_argv(fs, _sparse(tmp_path, "scratch", 256)), check=False)
    assert proc.returncode != 0
    refused = explain_preflight_failure(fs, (proc.stdout + proc.stderr).decode())
    assert "it does not accept frobnicate" in refused.message
