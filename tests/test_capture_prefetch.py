"""The capture's read-ahead of small files (capture/prefetch): which files, how far ahead."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from initrd_composer.capture import prefetch
from initrd_composer.capture.prefetch import Prefetcher


def _asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record each read-ahead request (the file's name and length) and still make it."""
    asked: list[tuple[str, int]] = []
    real = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED and offset == 0
        asked.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    return asked


def test_only_the_small_regular_files_of_a_directory_are_read_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _asked(monkeypatch)
    (tmp_path / "small").write_bytes(b"s" * 100)
    (tmp_path / "large").write_bytes(b"l" * (prefetch.SMALL + 1))  # the kernel's readahead streams it
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inside").write_bytes(b"i")  # when the walk enters sub
    os.mkfifo(tmp_path / "fifo")  # opening it would block
    os.symlink("small", tmp_path / "link")
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))  # another filesystem: its files are not ours
    try:
        (other / "elsewhere").write_bytes(b"e")
        (tmp_path / "sub" / "zz-last").write_bytes(b"z")
        p = Prefetcher(os.stat(tmp_path).st_dev, lambda: 0)
        for directory in (tmp_path, other, tmp_path / "sub"):
            p.directory(os.fsencode(directory))
        _wait_for(asked, ("zz-last", 1))  # directories are served in order: all three are done
        p.close()
    finally:
        shutil.rmtree(other)
    assert asked == [("small", 100), ("inside", 1), ("zz-last", 1)]


def _wait_for(asked: list[tuple[str, int]], item: tuple[str, int]) -> None:
    deadline = time.monotonic() + 10
    while item not in asked and time.monotonic() < deadline:
        time.sleep(0.01)


def test_it_stays_within_its_budget_of_the_archiver_and_stops_when_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _asked(monkeypatch)
    monkeypatch.setattr(prefetch, "BUDGET", 250)
    for i in range(10):
        (tmp_path / f"f{i}").write_bytes(b"x" * 100)
    consumed = [0]
    p = Prefetcher(os.stat(tmp_path).st_dev, lambda: consumed[0])
    p.directory(os.fsencode(tmp_path))
    time.sleep(0.3)
    assert len(asked) == 3  # 300 asked > 250 ahead of nothing read: it waits
    consumed[0] = 200
    time.sleep(0.3)
    assert len(asked) == 5  # 500 - 200 > 250 again
    started = time.monotonic()
    p.close()
    assert time.monotonic() - started < 1 and len(asked) == 5
