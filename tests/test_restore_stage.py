"""The restore stage's steps that need no disks: where the set is on the medium, and what is
refused before anything is planned."""

from __future__ import annotations

from pathlib import Path

import pytest

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.stage import locate_set, make_plan, run_nuke_at
from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.location import SetDirectory


def _set(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    return path


def test_the_set_is_the_media_root_or_its_one_subdirectory(tmp_path: Path) -> None:
    root = _set(tmp_path / "root")
    assert locate_set(root) == root
    media = tmp_path / "media"
    one = _set(media / "host1")
    (media / "not-a-set").mkdir()
    assert locate_set(media) == one
    assert locate_set(media, "not-a-set") == media / "not-a-set"  # restore_set= decides


def test_several_sets_or_none_need_the_command_line(tmp_path: Path) -> None:
    _set(tmp_path / "a")
    _set(tmp_path / "b")
    with pytest.raises(RestoreSetError, match=r"several restore sets .*: a, b") as info:
        locate_set(tmp_path)
    assert "restore_set=" in info.value.hint
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RestoreSetError, match=r"no restore set on .*empty"):
        locate_set(empty)


def test_a_machine_that_booted_uefi_is_refused_before_planning() -> None:
    layout = {"bootloader": {"uefi": {"booted_uefi": True}}}
    with pytest.raises(RestoreRefused, match="booted with UEFI"):
        make_plan(layout, [])


def test_a_set_without_manifest_is_refused_and_says_so(tmp_path: Path) -> None:
    lines: list[str] = []
    section = run_nuke_at(SetDirectory(tmp_path), [], lines.append)
    assert section["ok"] is False and "no manifest.json" in section["refused"]
    assert lines[0].startswith("restore refused, nothing written: ")
