"""Whole images built through the CLI: listing, module closure, selection, firmware,
reproducibility, and the unpacked image's runtime proven in a chroot."""

from __future__ import annotations

import filecmp
import hashlib
import io
import lzma
import shutil
import tarfile
from pathlib import Path

import pytest
import zstandard

from initrd_composer.cli import main as cli
from initrd_composer.image.compression import decompress_prefix
from initrd_composer.runner import run
from module_db.classify import classify
from module_db.kernel_modules import KernelModules
from module_db.names import name_from_path
from tests.image_fixtures import EPOCH, BuiltImage, build
from tests.kernel_fixtures import is_module_file, module_bytes, plain_module_name

pytest_plugins = ("tests.image_fixtures",)

NICS = ("e1000", "e1000e", "igb", "r8169", "virtio_net", "vmxnet3", "hv_netvsc", "usbnet", "r8152",
        "libphy", "realtek", "marvell", "broadcom")
STORAGE = ("ahci", "nvme", "megaraid_sas", "mpt3sas", "mptsas", "vmw_pvscsi", "virtio_blk", "virtio_scsi",
           "usb_storage", "uas", "sdhci_pci", "mmc_block", "dm_mod", "raid456", "loop")
TAPE = ("st", "ch")
FILESYSTEMS = ("isofs", "udf", "nfsv4", "nfsv3", "ext4", "xfs", "btrfs", "vfat", "squashfs")
USB_AND_HID = ("xhci_pci", "ehci_pci", "usbhid", "hid_generic")


def _stdout_lines(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    assert cli.main(argv) == 0
    return capsys.readouterr().out.splitlines()


# -- listing ---------------------------------------------------------------------------


def test_ls_equals_lsinitramfs(all_nics_image: BuiltImage, capsys: pytest.CaptureFixture[str]) -> None:
    ours = _stdout_lines(capsys, ["ls", str(all_nics_image.path)])
    debian = run(["lsinitramfs", all_nics_image.path]).stdout.decode().splitlines()
    assert len(ours) > 1000
    assert ours == debian


def test_ls_long_shows_nodes_links_and_modes(
    all_nics_image: BuiltImage, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _stdout_lines(capsys, ["ls", "-l", str(all_nics_image.path)])
    by_path = {line.split()[2]: line for line in lines}
    assert by_path["dev/null"].split()[:2] == ["crw-rw-rw-", "1,3"]
    assert by_path["init"].startswith("-rwxr-xr-x")
    assert by_path["lib"].endswith("lib -> usr/lib")
    assert by_path["tmp"].startswith("drwxrwxrwt")


# -- modules ---------------------------------------------------------------------------


def test_every_packed_module_brings_its_closure(
    all_nics_image: BuiltImage, kernel_modules: KernelModules
) -> None:
    manifest = all_nics_image.manifest
    packed = set(manifest.modules)
    assert len(packed) > 500
    incomplete = {
        name: sorted(set(kernel_modules.pack_closure([name])) - packed)
        for name in sorted(packed)
        if not set(kernel_modules.pack_closure([name])) <= packed
    }
    assert incomplete == {}
    assert {a.module for a in manifest.aliases} <= packed
    assert all(set(m.deps) <= packed for m in manifest.modules.values())
    # Every classified module of the kernel is in (--all-nics packs every class).
    assert sorted(set(classify(kernel_modules.deps)) - packed) == []


def test_module_files_are_the_kernels_own(
    all_nics_image: BuiltImage, kernel: tuple[str, Path], kernel_modules: KernelModules
) -> None:
    """Each packed module is the kernel's file, unpacked when the kernel ships it compressed
    (.ko.xz/.ko.zst/.ko.gz): the image holds plain .ko files only."""
    image = all_nics_image.parsed()
    prefix = f"usr/lib/modules/{all_nics_image.version}/"
    module_members = {m.path for m in image.members if m.path.startswith(prefix) and is_module_file(m.path)}
    assert all(p.endswith(".ko") for p in module_members)
    expected = {all_nics_image.module_path(n) for n in all_nics_image.manifest.modules}
    assert module_members == expected
    for name, mod in all_nics_image.manifest.modules.items():
        host_file = kernel[1] / kernel_modules.deps[name].path
        assert mod.path == plain_module_name(kernel_modules.deps[name].path), name
        data = image.read(all_nics_image.module_path(name))
        host = module_bytes(host_file)
        assert hashlib.sha256(data).digest() == hashlib.sha256(host).digest(), name
    # The image's own modules.dep (for busybox modprobe) lists exactly the packed files.
    dep_text = image.read(prefix + "modules.dep").decode()
    listed = {name_from_path(line.split(":")[0]) for line in dep_text.splitlines()}
    assert listed == set(all_nics_image.manifest.modules)


def test_all_nics_selection(all_nics_image: BuiltImage) -> None:
    modules = all_nics_image.manifest.modules
    wanted = NICS + STORAGE + TAPE + FILESYSTEMS + USB_AND_HID
    assert [n for n in wanted if n not in modules] == []
    assert {modules[n].module_class for n in NICS} == {"nic"}
    assert {modules[n].module_class for n in TAPE} == {"tape"}
    assert {modules[n].module_class for n in FILESYSTEMS} == {"fs"}
    assert modules["e1000"].reason == "class:nic"
    # tagged and bonded links (vlan=, bond=), with what they pull in (garp/mrp/stp for 8021q)
    links = ("8021q", "bonding", "team", "team_mode_activebackup", "team_mode_loadbalance")
    assert {n: (modules[n].module_class, modules[n].reason) for n in links if n in modules} == {
        n: ("nic", "class:nic") for n in links
    }
    assert {"garp", "mrp", "stp", "llc"} <= set(modules)


def test_without_all_nics_only_the_hosts_nic(host_nic_image: BuiltImage) -> None:
    modules = host_nic_image.manifest.modules
    assert modules["e1000"].reason == "host-nic:eth0"
    for other in ("igb", "e1000e", "r8169", "virtio_net"):
        assert other not in modules
    assert [n for n, m in modules.items() if m.module_class == "nic" and not m.reason.startswith("dep:")] == [
        "e1000"
    ]
    # Everything that is not a NIC is still there.
    assert [n for n in STORAGE + TAPE + FILESYSTEMS + USB_AND_HID if n not in modules] == []


# -- firmware --------------------------------------------------------------------------


def test_firmware_is_found_decompressed_and_the_rest_listed_missing(
    fake_kernel_dir: Path, build_cache: Path, tmp_path: Path, kernel: tuple[str, Path]
) -> None:
    wanted = run(["modinfo", "-k", kernel[0], "-F", "firmware", "e100"]).stdout.decode().split()
    assert "e100/d101m_ucode.bin" in wanted and len(wanted) >= 3
    fw_dir = tmp_path / "firmware"
    (fw_dir / "e100").mkdir(parents=True)
    d101m = b"d101m microcode\x00\x01" * 64
    d101s = b"d101s microcode\x00\x02" * 64
    (fw_dir / "e100/d101m_ucode.bin.xz").write_bytes(lzma.compress(d101m, check=lzma.CHECK_CRC32))
    (fw_dir / "e100/d101s_ucode.bin.zst").write_bytes(zstandard.ZstdCompressor().compress(d101s))
    built = build(["--kernel", str(fake_kernel_dir), "--all-nics", "--firmware-dir", str(fw_dir)],
                  tmp_path / "initrd.img", build_cache)
    image = built.parsed()
    assert image.read("usr/lib/firmware/e100/d101m_ucode.bin") == d101m
    assert image.read("usr/lib/firmware/e100/d101s_ucode.bin") == d101s
    assert not [p for p in image.paths() if p.endswith((".xz", ".zst"))]
    manifest = built.manifest
    assert manifest.firmware_present == ("e100/d101m_ucode.bin", "e100/d101s_ucode.bin")
    assert sorted(manifest.firmware_missing) == sorted(set(wanted) - set(manifest.firmware_present))
    assert sorted(manifest.modules["e100"].firmware) == sorted(wanted)


# -- reproducibility -------------------------------------------------------------------


def test_same_epoch_same_bytes_other_epoch_other_bytes(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path: Path, kernel: tuple[str, Path]
) -> None:
    again = build(["--kernel", kernel[0], "--all-nics"], tmp_path / "again.img", build_cache)
    assert filecmp.cmp(all_nics_image.path, again.path, shallow=False)
    later = build(["--kernel", kernel[0], "--all-nics"], tmp_path / "later.img", build_cache, EPOCH + 86400)
    assert not filecmp.cmp(all_nics_image.path, later.path, shallow=False)
    # Clamped: nothing is newer than the epoch, and files made at build time carry it.
    for built, epoch in ((all_nics_image, EPOCH), (later, EPOCH + 86400)):
        members = built.parsed().members
        assert max(m.mtime for m in members) == epoch
        assert {(m.uid, m.gid) for m in members} == {(0, 0)}


@pytest.mark.parametrize("compress", [["xz", "--level", "0"], ["gzip"]], ids=["xz", "gzip"])
def test_reproducible_with_other_compressors(
    compress: list[str], fake_kernel_dir: Path, build_cache: Path, tmp_path: Path
) -> None:
    # The small fake kernel keeps this fast; xz at its default level takes a minute.
    argv = ["--kernel", str(fake_kernel_dir), "--all-nics", "--compress", *compress]
    first = build(argv, tmp_path / "first.img", build_cache)
    second = build(argv, tmp_path / "second.img", build_cache)
    assert first.parsed().segments[-1].compression == compress[0]
    assert filecmp.cmp(first.path, second.path, shallow=False)


# -- the unpacked image works ----------------------------------------------------------


@pytest.fixture(scope="module")
def unpacked(all_nics_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's main segment unpacked by GNU cpio as root (device nodes included)."""
    dest = tmp_path_factory.mktemp("unpacked")
    data = all_nics_image.path.read_bytes()
    main = all_nics_image.parsed().segments[-1]
    stream, _used = decompress_prefix(memoryview(data)[main.offset :], str(all_nics_image.path))
    run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input_bytes=stream, cwd=dest)
    return dest


def _chroot(directory: Path, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of argv run in a chroot of directory."""
    chroot = shutil.which("chroot")
    assert chroot is not None
    proc = run([chroot, directory, *argv], check=False, env={"LC_ALL": "C"}, timeout=60)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


@pytest.mark.root
def test_unpacked_image_runs_python_and_busybox(unpacked: Path) -> None:
    assert (unpacked / "dev/null").is_char_device()
    code = (
        "import sys; sys.path.insert(0, '/usr/lib/initrd-composer/python'); "
        "import pyudev, libarchive, module_db; pyudev.Context(); print('imports ok')"
    )
    assert _chroot(unpacked, "/usr/bin/python3", "-IS", "-c", code) == (0, "imports ok\n", "")
    assert _chroot(unpacked, "/bin/busybox", "true") == (0, "", "")
    rc, out, err = _chroot(unpacked, "/bin/sh", "-c", "test -x /init && head -1 /init")
    assert rc == 0 and out.startswith("#!/usr/bin/python3"), err


@pytest.mark.root
def test_libarchive_reads_archives_with_trimmed_icu(unpacked: Path) -> None:
    icu = next((unpacked / "usr/lib/x86_64-linux-gnu").glob("libicudata.so.*.*"))
    assert icu.read_bytes().count(b"\0") > icu.stat().st_size // 2  # trimmed: mostly zeros
    names = {"hello.txt": b"hello\n", "dir/grüße.txt": "grüße\n".encode()}
    for mode, suffix in (("w", "tar"), ("w:gz", "tar.gz"), ("w:xz", "tar.xz")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for name, data in names.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        (unpacked / f"tmp/test.{suffix}").write_bytes(buf.getvalue())
        code = (
            "import sys; sys.path.insert(0, '/usr/lib/initrd-composer/python'); import libarchive\n"
            f"data = open('/tmp/test.{suffix}', 'rb').read()\n"
            "with libarchive.memory_reader(data) as archive:\n"
            "    for entry in archive:\n"
            "        print(entry.pathname, b''.join(entry.get_blocks()).decode().strip())\n"
        )
        # stderr may carry libarchive's "Pathname can't be converted from UTF-8 to current
        # locale": the image has no UTF-8 locale, yet the names come through intact.
        rc, out, err = _chroot(unpacked, "/usr/bin/python3", "-IS", "-c", code)
        assert (rc, out) == (0, "hello.txt hello\ndir/grüße.txt grüße\n"), (suffix, err)
