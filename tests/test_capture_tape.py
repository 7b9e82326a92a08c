"""`compose-initrd capture -o TAPE`: a machine captured straight onto an OBDR tape, here a
tape-image directory (`--tape`; a /dev/nstN drive takes the same path through the st
ioctls, see test_obdr_writer): header, the rescue ISO with the given initrd, and the set as
tape file 2, which the boot side's tape reader (the one a restore uses) reads back whole;
the stage the set passed through is gone. Wrong targets fail in one line, before the capture."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from initrd_composer.boot.restore.stage import read_set
from initrd_composer.boot.sources.tape_set import TapeSet, index_members
from initrd_composer.boot.tape import TapeImageDir, blocks_stream, read_tape_file
from initrd_composer.media.obdr_writer import read_obdr_label
from tests.image_fixtures import BuiltImage, compose
from tests.test_mount_source import SourceImage, build_source_image

pytest_plugins = ("tests.image_fixtures",)
pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> SourceImage:
    assert os.geteuid() == 0, "these tests attach loop devices and mount: run them as root"
    return build_source_image(tmp_path_factory.mktemp("capture-tape-source"))


def test_capture_onto_a_tape_image(source: SourceImage, all_nics_image: BuiltImage, build_cache: Path,
                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tape_dir, stage = tmp_path / "tape", tmp_path / "stage"
    stage.mkdir()
    argv = ["capture", "--disk", str(source.image), "--tape", "-o", str(tape_dir), "--stage", str(stage),
            "--initrd", str(all_nics_image.path), "--no-progress"]  # fmt: skip
    assert compose(argv, build_cache) == 0
    out = capsys.readouterr().out
    assert f"{tape_dir}: the set is tape file 2 of this OBDR tape (image)" in out, out
    assert list(stage.iterdir()) == []  # the stage is removed
    tape = TapeImageDir.open(tape_dir)
    assert [f["block_size"] for f in tape.files] == [512, 2048, 65536]
    label = read_obdr_label(tape_dir)
    assert label is not None and label.data_bytes is not None
    stream = blocks_stream(read_tape_file(TapeImageDir.open(tape_dir), 2))
    index = index_members(stream)
    while stream.read(1 << 20):
        pass
    names = [name for name, _ in index.files]
    assert names[:2] == ["manifest.json", "layout.json"], names
    location = TapeSet("/dev/nst0", "", index, open_tape=lambda: TapeImageDir.open(tape_dir))
    manifest, layout = read_set(location)
    assert [a.name for a in manifest.archives] == ["root", "boot", "srv"] and layout["disks"]
    for archive in sorted(manifest.archives, key=lambda a: location.position(a.file)):
        with location.open(archive.file) as member:
            assert hashlib.sha256(member.read()).hexdigest() == archive.sha256, archive.name
    location.release()
    iso = tape_dir / "file-001.bin"
    assert iso.read_bytes()[0x8001:0x8006] == b"CD001"  # the ISO 9660 volume descriptor


def test_a_wrong_tape_target_fails_before_the_capture(
    source: SourceImage, tmp_path: Path, build_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("kept\n")
    stage = tmp_path / "stage"
    stage.mkdir()
    wrong = ((busy, f"{busy} is not empty"), (Path("/dev/nst9"), "no tape drive at /dev/nst9"))
    for target, message in wrong:
        argv = ["capture", "--disk", str(source.image), "--tape", "-o", str(target), "--stage", str(stage)]
        assert compose(argv, build_cache) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"compose-initrd: error: {message}") and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 2  # the error and its hint
    assert list(stage.iterdir()) == [] and (busy / "file").read_text() == "kept\n"
