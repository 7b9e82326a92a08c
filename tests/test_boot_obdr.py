"""An OBDR tape image from `compose-initrd obdr`: its second file is the very ISO the ISO
verb writes (with data behind it, with `obdr` added to the entries), that ISO boots as a
CD-ROM (what an OBDR drive shows the BIOS) and looks for its tape, and its data file reads
back through the boot side's tape reader into the tree that was saved."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path

import pytest

from initrd_composer.boot.tape import TapeImageDir, copy_tape_file, parse_obdr_label
from initrd_composer.cli import main as cli
from initrd_composer.media.medium_reader import open_medium
from tests.image_fixtures import EPOCH, BuiltImage, build_env
from tests.test_boot_iso import E1000, cdrom, report_of

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures",)
pytestmark = [pytest.mark.qemu]

MENU = ["--default-mode", "probe", "--timeout", "1"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def media(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("obdr")
    data = tmp / "data"
    (data / "etc").mkdir(parents=True)
    (data / "etc" / "fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n")
    (data / "big.bin").write_bytes(os.urandom(3 * 2**20 + 123))
    os.symlink("etc/fstab", data / "fstab.link")
    with build_env(build_cache, EPOCH):
        initrd = ["--initrd", str(all_nics_image.path), *MENU]
        # a short wait for the tape the CD-ROM boot below has no drive for
        tape_args = [*initrd, "--append", "media_timeout=5", "--data", str(data), "-o", str(tmp / "tape")]
        assert cli.main(["obdr", *tape_args]) == 0
        iso_args = [*initrd, "--append", "media_timeout=5 obdr", "-o", str(tmp / "rescue.iso")]
        assert cli.main(["iso", *iso_args]) == 0
    return {"tape": tmp / "tape", "iso": tmp / "rescue.iso", "data": data, "tmp": tmp}


def test_second_tape_file_is_the_iso(media: dict[str, Path], all_nics_image: BuiltImage) -> None:
    with TapeImageDir.open(media["tape"]) as tape:
        sizes = [f["block_size"] for f in tape.files]
        iso_file = tape.file_path(1)
        header = tape.file_path(0).read_bytes()
    assert sizes == [512, 2048, 65536]
    assert len(header) == 10 * 1024 and parse_obdr_label(header) is not None
    assert _sha(iso_file) == _sha(media["iso"])
    # ls reads the initrd through tape file 1, as on the initrd itself
    assert open_medium(media["tape"]).paths() == open_medium(all_nics_image.path).paths()


def test_data_file_reads_back_identical(media: dict[str, Path]) -> None:
    out = io.BytesIO()
    with TapeImageDir.open(media["tape"]) as tape:
        info = copy_tape_file(tape, 2, out)
        recorded = tape.files[2]["sha256"]
    assert info.sha256 == recorded and info.block_size == 65536
    extract = media["tmp"] / "restored"
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r|") as archive:
        # Debian 12's Python 3.11.2 predates extraction filters (3.11.4); the archive is ours.
        if hasattr(tarfile, "tar_filter"):
            archive.extractall(extract, filter="tar")
        else:
            archive.extractall(extract)
    data = media["data"]
    for rel in ("etc/fstab", "big.bin"):
        assert (extract / rel).read_bytes() == (data / rel).read_bytes()
        # Python's tarfile sets mtimes as floats: compare to the microsecond
        assert abs((extract / rel).stat().st_mtime_ns - (data / rel).stat().st_mtime_ns) < 1000
    assert os.readlink(extract / "fstab.link") == "etc/fstab"


@pytest.mark.xdist_group("iso-bios")
def test_iso_from_the_tape_boots_as_a_cdrom(media: dict[str, Path]) -> None:
    with TapeImageDir.open(media["tape"]) as tape:
        iso = tape.file_path(1)
    result = qemu_boot.boot_firmware([*cdrom(iso), *E1000], timeout=90)
    report = report_of(result)
    blockdevs = report["blockdevs"]
    assert isinstance(blockdevs, list)
    cdroms = [b for b in blockdevs if b["type"] == "cdrom"]
    assert [b["size_bytes"] for b in cdroms] == [iso.stat().st_size]
    # `obdr` from the entries: the tape was looked for, and this machine has no drive
    assert any("no tape drive after 5 s" in line for line in result.lines), "\n".join(result.lines[-30:])
