"""`compose-initrd iso`: what the ISO holds, its boot records, reproducibility, bad input.
The boots themselves are in test_boot_iso.py."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from initrd_composer.boot.sources.fs_label import identify
from initrd_composer.boot.sources.marker import MARKER_PATH, check_marker
from initrd_composer.cli import main as cli
from initrd_composer.image.reader import open_image
from initrd_composer.media.iso_image import EFI_FILES, SECTOR
from initrd_composer.media.loader_files import LOADERS
from initrd_composer.media.medium_reader import ISO_INITRD, iso_member, open_medium
from initrd_composer.runner import run
from tests.image_fixtures import EPOCH, BuiltImage, build_env, loader_root_without

pytest_plugins = ("tests.image_fixtures",)


def _iso(argv: list[str], cache: Path) -> int:
    with build_env(cache, EPOCH):
        return cli.main(["iso", *argv])


@pytest.fixture(scope="module")
def iso(all_nics_image: BuiltImage, build_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iso") / "rescue.iso"
    assert _iso(["--initrd", str(all_nics_image.path), "-o", str(out)], build_cache) == 0
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_initrd_on_the_iso_is_byte_identical(iso: Path, all_nics_image: BuiltImage) -> None:
    placed = iso_member(iso, ISO_INITRD, str(iso))
    assert _sha(placed) == _sha(all_nics_image.path.read_bytes())
    kernel = iso_member(iso, "boot/vmlinuz", str(iso))
    assert kernel == Path(f"/boot/vmlinuz-{all_nics_image.version}").read_bytes()


def test_verb_prints_the_sha256_of_the_initrd_it_placed(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.iso"
    assert _iso(["--initrd", str(all_nics_image.path), "-o", str(out)], build_cache) == 0
    expected = _sha(all_nics_image.path.read_bytes())
    assert f"sha256 {expected}  initrd.img" in capsys.readouterr().out.splitlines()


def test_ls_on_the_iso_lists_the_initrd(iso: Path, all_nics_image: BuiltImage) -> None:
    assert open_medium(iso).paths() == open_image(all_nics_image.path).paths()


def test_boot_records_bios_uefi_and_hybrid_tables(iso: Path) -> None:
    report = run(["xorriso", "-indev", str(iso), "-report_el_torito", "plain"]).stdout.decode()
    images = [line for line in report.splitlines() if line.startswith("El Torito boot img")]
    platforms = [line.split(":")[1].split()[1] for line in images]
    assert platforms == ["BIOS", "UEFI"], report
    assert "/isolinux/isolinux.bin" in report and "/boot/grub/efi.img" in report
    # isohybrid: an MBR with a bootable partition over the image and an EFI (0xEF) one.
    head = iso.read_bytes()[:512]
    assert head[510:512] == b"\x55\xaa"
    entries = [head[446 + 16 * i : 462 + 16 * i] for i in range(4)]
    types = [e[4] for e in entries if e[4]]
    assert 0xEF in types, types
    assert any(e[0] == 0x80 for e in entries)  # active: what BIOSes boot from a USB disk
    assert iso.stat().st_size % SECTOR == 0


def test_efi_image_carries_the_signed_shim_and_grub(iso: Path, tmp_path: Path) -> None:
    efi = tmp_path / "efi.img"
    efi.write_bytes(iso_member(iso, "boot/grub/efi.img", str(iso)))
    env = {"MTOOLS_SKIP_CHECK": "1"}
    for name, loader in EFI_FILES.items():
        data = run(["mcopy", "-n", "-i", str(efi), f"::/EFI/BOOT/{name}", "-"], env=env).stdout
        assert data == (Path("/") / LOADERS[loader][0]).read_bytes(), name


def test_menus_offer_every_mode_over_serial(iso: Path) -> None:
    isolinux = iso_member(iso, "isolinux/isolinux.cfg", str(iso)).decode()
    grub = iso_member(iso, "boot/grub/grub.cfg", str(iso)).decode()
    assert isolinux.startswith("SERIAL 0 115200\n")
    assert "terminal_output console serial" in grub
    for mode in ("nuke", "interactive", "compare", "expert", "probe"):
        line = f"console=tty0 console=ttyS0,115200n8 {mode}"
        assert f"APPEND {line}" in isolinux
        assert f"linux /boot/vmlinuz {line}" in grub
    assert "DEFAULT interactive" in isolinux and "set default=interactive" in grub
    assert "TIMEOUT 100" in isolinux and "set timeout=10" in grub
    for c32 in ("ldlinux.c32", "menu.c32", "libutil.c32", "libcom32.c32"):
        assert iso_member(iso, f"isolinux/{c32}", str(iso))
    assert iso_member(iso, ".disk/info", str(iso))  # how the GRUB CD image finds the disc


def _pvd_volume_id(iso: Path) -> str:
    """The label as xorriso reads it from the primary volume descriptor."""
    report = run(["xorriso", "-indev", str(iso), "-pvd_info"]).stdout.decode()
    (line,) = [ln for ln in report.splitlines() if ln.startswith("Volume Id")]
    return line.split(":", 1)[1].strip()


def _marker(iso: Path, dest: Path, *also: str) -> tuple[bytes, Path]:
    """medium.json as xorriso extracts it (with the directories `also`), and where."""
    argv = ["xorriso", "-osirrox", "on", "-indev", str(iso)]
    for name in (".initrd-composer", *also):
        argv += ["-extract", f"/{name}", str(dest / name)]
    run(argv)
    return (dest / MARKER_PATH).read_bytes(), dest


def test_marker_names_the_disc_and_the_initrd_on_it(
    iso: Path, all_nics_image: BuiltImage, tmp_path: Path
) -> None:
    raw, root = _marker(iso, tmp_path / "tree")
    doc = json.loads(raw)
    assert doc == {
        "format": "initrd-composer-medium", "version": 1, "volume_id": "RESCUE",
        "kernel": all_nics_image.version, "initrd_sha256": _sha(all_nics_image.path.read_bytes()),
        "data": None,
    }  # fmt: skip
    assert raw == (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()  # sorted keys
    assert _pvd_volume_id(iso) == "RESCUE"
    assert os.stat(root / MARKER_PATH).st_mtime == EPOCH  # the source epoch, like every file
    # what /init reads: the label from the disc's own header, and the marker accepted for it
    with iso.open("rb") as f:
        fs = identify(lambda offset, size: os.pread(f.fileno(), size, offset))
    assert fs is not None and (fs.fstype, fs.label) == ("iso9660", "RESCUE")
    assert check_marker(str(root), fs.fstype, fs.label) == (doc, "")
    assert check_marker(str(root), fs.fstype, "OTHER")[0] is None  # the same file on another disc


def test_marker_follows_volume_id_and_data(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "backup.tar").write_bytes(b"x" * 4096)
    out = tmp_path / "v.iso"
    argv = ["--initrd", str(all_nics_image.path), "--volume-id", "Backup-7", "--data", str(data),
            "-o", str(out)]  # fmt: skip
    assert _iso(argv, build_cache) == 0
    raw, root = _marker(out, tmp_path / "tree", "data")
    doc = json.loads(raw)
    assert (doc["volume_id"], doc["data"]) == ("Backup-7", "data")
    assert _pvd_volume_id(out) == "Backup-7"
    assert check_marker(str(root), "iso9660", "Backup-7") == (doc, "")


def test_building_twice_gives_the_same_bytes(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "a.iso", tmp_path / "b.iso"
    assert _iso(["--initrd", str(all_nics_image.path), "-o", str(first)], build_cache) == 0
    os.utime(all_nics_image.path)  # a newer initrd mtime must not leak into the ISO
    assert _iso(["--initrd", str(all_nics_image.path), "-o", str(second)], build_cache) == 0
    assert first.read_bytes() == second.read_bytes()


def test_data_directory_goes_onto_the_disc(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "backup.tar").write_bytes(os.urandom(300_000))
    (data / "sub" / "mountlist.txt").write_text("/dev/sda1 / ext4\n")
    out = tmp_path / "d.iso"
    argv = ["--initrd", str(all_nics_image.path), "--data", str(data), "-o", str(out)]
    assert _iso(argv, build_cache) == 0
    for rel in ("backup.tar", "sub/mountlist.txt"):
        assert iso_member(out, f"data/{rel}", str(out)) == (data / rel).read_bytes()


def _error(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("compose-initrd: error: ") and "hint:" in err[1], err
    return err


def _nothing_left(directory: Path) -> None:
    assert sorted(p.name for p in directory.iterdir() if p.suffix in (".iso", ".tmp")) == []


def test_data_larger_than_the_medium_is_refused_before_writing(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with (data / "big").open("wb") as f:
        f.truncate(80 * 2**20)  # sparse: costs nothing here, 80 MiB on a disc
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["--initrd", str(all_nics_image.path), "--data", str(data), "--media-size", "100M",
            "-o", str(out_dir / "r.iso")]
    assert _iso(argv, build_cache) == 1
    err = _error(capsys)
    assert "the medium holds 100 MiB" in err[0] and str(data) in err[0]
    _nothing_left(out_dir)


@pytest.mark.parametrize("verb", ["iso", "obdr"])
def test_an_unfinished_restore_set_is_refused_before_writing(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    verb: str,
) -> None:
    data = tmp_path / "data"
    (data / "web01").mkdir(parents=True)
    (data / "web01" / "layout.json").write_text("{}\n")  # a capture stopped before its manifest
    out = tmp_path / ("r.iso" if verb == "iso" else "tape")
    with build_env(build_cache, EPOCH):
        status = cli.main([verb, "--initrd", str(all_nics_image.path), "--data", str(data), "-o", str(out)])
    assert status == 1
    err = _error(capsys)
    assert err[0] == (f"compose-initrd: error: --data {data}: the restore set in {data / 'web01'} has no "
                      "manifest.json (its capture did not finish)"), err
    assert not out.exists()


def test_missing_loader_file_names_its_package(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = loader_root_without(tmp_path / "loaders", "gcdx64.efi")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["--initrd", str(all_nics_image.path), "--loader-root", str(root), "-o", str(out_dir / "r.iso")]
    assert _iso(argv, build_cache) == 1
    err = _error(capsys)
    assert "gcdx64.efi.signed is missing" in err[0] and "apt-get install grub-efi-amd64-signed" in err[1]
    _nothing_left(out_dir)


@pytest.mark.parametrize(
    ("argv", "status", "needle"),
    [
        (["--volume-id", "has space"], 2, "bad volume id"),
        (["--media-size", "12Q"], 2, "bad size"),
        (["--serial", "com1"], 2, "bad serial console"),
        (["--default-mode", "reboot"], 2, "unknown default mode"),
        (["--append", "a;b"], 2, "cannot go on a kernel command line"),
    ],
)
def test_bad_options_are_usage_errors(  # noqa: PLR0917 - fixtures and parameters
    all_nics_image: BuiltImage, build_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    argv: list[str], status: int, needle: str,
) -> None:
    out = tmp_path / "r.iso"
    assert _iso(["--initrd", str(all_nics_image.path), *argv, "-o", str(out)], build_cache) == status
    assert needle in _error(capsys)[0]
    assert not out.exists()


def test_initrd_not_built_by_us_is_refused(
    build_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "foreign.img"
    run(["cpio", "-o", "-H", "newc", "-O", str(foreign)], input_bytes=b"", cwd=tmp_path)
    assert _iso(["--initrd", str(foreign), "-o", str(tmp_path / "r.iso")], build_cache) == 1
    assert "not an image built by compose-initrd" in _error(capsys)[0]
    assert _iso(["--initrd", str(tmp_path / "nope.img"), "-o", str(tmp_path / "r.iso")], build_cache) == 1
    assert "no such initrd" in _error(capsys)[0]


def test_mbr_partition_table_is_well_formed(iso: Path) -> None:
    head = iso.read_bytes()[:512]
    size_sectors = iso.stat().st_size // 512
    for i in range(4):
        entry = head[446 + 16 * i : 462 + 16 * i]
        if entry[4]:
            start, count = struct.unpack_from("<II", entry, 8)
            assert start + count <= size_sectors


@pytest.mark.root
@pytest.mark.parametrize("verb", ["iso", "obdr"])
def test_full_disk_leaves_the_old_medium_and_no_temp(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    verb: str,
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mnt])
    try:
        target = mnt / ("r.iso" if verb == "iso" else "tape")
        if verb == "iso":
            target.write_bytes(b"the previous ISO")
        with build_env(build_cache, EPOCH):
            assert cli.main([verb, "--initrd", str(all_nics_image.path), "-o", str(target)]) == 1
        assert _error(capsys)[0] == f"compose-initrd: error: no space left on device writing {target}"
        left = sorted(p.name for p in mnt.iterdir())
        assert left == (["r.iso"] if verb == "iso" else []), left
        if verb == "iso":
            assert target.read_bytes() == b"the previous ISO"
    finally:
        run(["umount", mnt])
