"""One initrd, three media: the ISO, the PXE tree and the OBDR tape image all carry it byte
for byte, and each verb prints the sha256 of what it placed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from initrd_composer.boot.sources.marker import MARKER_PATH
from initrd_composer.boot.tape import TapeImageDir
from initrd_composer.cli import main as cli
from initrd_composer.media.medium_reader import ISO_INITRD, iso_member
from tests.image_fixtures import EPOCH, BuiltImage, build_env

pytest_plugins = ("tests.image_fixtures",)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _printed_sha(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("sha256 ") and ln.endswith("  initrd.img")]
    assert len(lines) == 1, out
    return lines[0].split()[1]


def test_same_initrd_in_iso_pxe_and_obdr(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    initrd = ["--initrd", str(all_nics_image.path)]
    printed = {}
    with build_env(build_cache, EPOCH):
        for verb, out in (("iso", "rescue.iso"), ("pxe", "tftp"), ("obdr", "tape")):
            assert cli.main([verb, *initrd, "-o", str(tmp_path / out)]) == 0
            printed[verb] = _printed_sha(capsys.readouterr().out)
    with TapeImageDir.open(tmp_path / "tape") as tape:
        tape_iso = tape.file_path(1).read_bytes()
    placed = {
        "iso": iso_member(tmp_path / "rescue.iso", ISO_INITRD, "iso"),
        "pxe": (tmp_path / "tftp" / "initrd.img").read_bytes(),
        "obdr": iso_member(tape_iso, ISO_INITRD, "tape file 1"),
    }
    expected = _sha(all_nics_image.path.read_bytes())
    assert {verb: _sha(data) for verb, data in placed.items()} == dict.fromkeys(placed, expected)
    assert printed == dict.fromkeys(printed, expected)
    # the tape's ISO is the ISO verb's, byte for byte (same options, same inputs)
    assert tape_iso == (tmp_path / "rescue.iso").read_bytes()
    # and its marker names that initrd; the data is tape file 2, not on the disc
    marker = json.loads(iso_member(tape_iso, MARKER_PATH, "tape file 1"))
    assert (marker["initrd_sha256"], marker["volume_id"], marker["data"]) == (expected, "RESCUE", None)


def test_building_verbs_agree_with_a_plain_build(
    kernel: tuple[str, Path], build_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --initrd each verb builds; the build is reproducible, so the sha256 is the one
    `compose-initrd build` gives for the same options."""
    options = ["--kernel", kernel[0], "--add-modules", "e1000"]
    with build_env(build_cache, EPOCH):
        assert cli.main([*options, "-o", str(tmp_path / "initrd.img")]) == 0
        capsys.readouterr()
        assert cli.main(["pxe", *options, "-o", str(tmp_path / "tftp")]) == 0
    out = capsys.readouterr().out
    assert _printed_sha(out) == _sha((tmp_path / "initrd.img").read_bytes())
    assert str(tmp_path) not in out.split("initrd.img:")[0]  # no scratch path on show
