"""The helpers several writers share: SOURCE_DATE_EPOCH, capacity and free-space checks,
atomic directories, the one decompressor, the build's seconds, the hardware report's save."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from initrd_composer.atomic_output import atomic_directory
from initrd_composer.boot import hwreport
from initrd_composer.build.compose import BuildOptions, ImagePlan, build_image
from initrd_composer.build.kernel_locate import KernelLocation
from initrd_composer.build.module_plan import ModulePlan
from initrd_composer.errors import ComposeError
from initrd_composer.image.compression import DecompressError, compress_bytes, decompress_any
from initrd_composer.image.entries import data_entry
from initrd_composer.media.capacity import check_capacity, check_free_space, mib
from initrd_composer.source_date import source_date_epoch
from module_db.contract import ImageManifest
from module_db.kernel_modules import KernelModules


# -- SOURCE_DATE_EPOCH ------------------------------------------------------------------------
def test_source_date_epoch_or_the_fallback_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = tmp_path / "modules.dep"
    stamp.write_text("")
    os.utime(stamp, (1_600_000_000, 1_600_000_000))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch(stamp) == 1_600_000_000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "")  # empty is unset
    assert source_date_epoch(stamp) == 1_600_000_000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch(tmp_path / "absent") == 1_700_000_000  # the fallback is not looked at


@pytest.mark.parametrize("value", ["yesterday", "-5", "1_000", " 12", "1.5", "\u00b2"])
def test_source_date_epoch_must_be_decimal_seconds(value: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(ComposeError) as info:
        source_date_epoch(tmp_path)
    assert info.value.message == f"SOURCE_DATE_EPOCH={value!r} is not a number"
    assert info.value.hint == "set seconds since 1970"


# -- capacity -----------------------------------------------------------------------------------
def test_mib_rounds_needed_up_and_held_to_the_nearest_tenth() -> None:
    assert mib(100 * 2**20, up=True) == mib(100 * 2**20, up=False) == "100"
    assert mib(100 * 2**20 + 1, up=True) == "100.1"
    assert mib(100 * 2**20 - 1, up=False) == "100"
    assert mib(180 * 1024, up=True) == "0.2" and mib(180 * 1024, up=False) == "0.2"
    assert mib(150 * 1024, up=False) == "0.1"


def test_check_capacity_one_message() -> None:
    check_capacity(10, None, "x", "hint")  # no limit
    check_capacity(10, 10, "x", "hint")  # exactly full fits
    with pytest.raises(ComposeError) as info:
        check_capacity(3 * 2**20, 2**20, "the ISO", "a bigger one", detail=" (with more)")
    assert info.value.message == "the ISO needs 3 MiB (with more), the medium holds 1 MiB"
    assert info.value.hint == "a bigger one"


def test_check_free_space_raises_enospc(tmp_path: Path) -> None:
    check_free_space(tmp_path, 1)
    with pytest.raises(OSError) as info:
        check_free_space(tmp_path, 2**62)
    assert info.value.errno == errno.ENOSPC


def test_free_space_inside_an_atomic_writer_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    with pytest.raises(ComposeError) as info, atomic_directory(target) as tmp:
        check_free_space(tmp, 2**62)
    assert info.value.message == f"no space left on device writing {target}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- atomic directories -------------------------------------------------------------------------
def test_atomic_directory_appears_whole_with_mode_0755(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        assert not target.exists()  # nothing before the block ends
        assert (tmp.stat().st_mode & 0o777) == 0o755
    assert (target / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_atomic_directory_goes_onto_an_empty_directory_never_a_full_one(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    target.mkdir()
    with atomic_directory(target) as tmp:
        (tmp / "new").write_text("n")
    assert [p.name for p in target.iterdir()] == ["new"]
    with pytest.raises(ComposeError, match=f"cannot write {target}"), atomic_directory(target) as tmp:
        (tmp / "newer").write_text("x")
    assert [p.name for p in target.iterdir()] == ["new"]  # without replace a full tree stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_atomic_directory_replace_swaps_a_full_tree(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    target.mkdir()
    (target / "old").write_text("o")
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "new").write_text("n")
        assert [p.name for p in target.iterdir()] == ["old"]
    assert [p.name for p in target.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"], "no .tmp/.old left beside it"


def test_atomic_directory_failure_leaves_the_old_tree(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    target.mkdir()
    (target / "old").write_text("o")
    with pytest.raises(KeyboardInterrupt), atomic_directory(target, replace=True) as tmp:
        (tmp / "half").write_text("h")
        raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_atomic_directory_in_a_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "tree"
    with pytest.raises(ComposeError) as info, atomic_directory(target):
        pass
    assert info.value.message == f"cannot write {target}: directory {target.parent} does not exist"


# -- the one decompressor -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["zstd", "xz", "gzip"])
def test_decompress_error_detail_leaves_the_name_to_the_caller(name: str) -> None:
    data = bytes(range(256)) * 64
    packed = compress_bytes(data, name)
    assert decompress_any(packed, "m.ko") == data
    with pytest.raises(DecompressError) as info:
        decompress_any(packed[:-8], "m.ko")
    assert info.value.message == f"m.ko: {info.value.detail}"
    assert info.value.detail.startswith(("truncated", "corrupt"))


# -- the build's seconds ------------------------------------------------------------------------
def test_build_seconds_count_from_the_start_of_planning(tmp_path: Path) -> None:
    km = KernelModules(version="0.0-test", deps={}, aliases=(), softdeps={}, weakdeps={},
                       builtin=frozenset(), builtin_aliases=())
    plan = ImagePlan(
        kernel=KernelLocation("0.0-test", tmp_path / "lib/modules/0.0-test", tmp_path),
        km=km,
        modules=ModulePlan(modules={}, roots=()),
        manifest=ImageManifest(kernel="0.0-test", modules={}, aliases=(), builtin=frozenset()),
        entries=(data_entry("init", b"#!/bin/sh\n", mode=0o755),),
        warnings=(),
        epoch=0,
        started=time.monotonic() - 100,  # planning began 100 s ago
    )
    opts = BuildOptions(output=tmp_path / "initrd.img", root=tmp_path, microcode=False, compress="none")
    report = build_image(opts, plan)
    assert 100 <= report.seconds < 200
    assert (tmp_path / "initrd.img").is_file()


# -- the hardware report under /run -------------------------------------------------------------
def test_a_report_that_cannot_be_saved_is_said_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run").write_text("not a directory")
    target = tmp_path / "run" / "x" / "hwreport.json"
    monkeypatch.setattr(hwreport, "HWREPORT_PATH", str(target))
    assert hwreport.publish({"devices": []}) == 'hwreport: {"devices":[]}'
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"initrd-composer: cannot save the hardware report to {target}: Not a directory"]
