from __future__ import annotations

import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from initrd_composer.atomic_output import atomic_output
from initrd_composer.errors import ComposeError
from initrd_composer.image.compression import compressing
from initrd_composer.image.cpio_writer import write_cpio
from initrd_composer.image.entries import data_entry
from initrd_composer.runner import run


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_success_replaces_with_mode_0644(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        with atomic_output(target) as out:
            out.write(b"new image")
            assert target.read_bytes() == b"old"  # not visible before the block ends
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new image"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert _leftovers(tmp_path) == ["initrd.img"]


def test_exception_leaves_existing_file_untouched(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as out:
        out.write(b"half")
        raise RuntimeError("build failed")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == ["initrd.img"]


def test_compose_error_passes_through_and_nothing_appears(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    with pytest.raises(ComposeError, match="planned file vanished"), atomic_output(target):
        raise ComposeError("planned file vanished")
    assert _leftovers(tmp_path) == []


def test_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "initrd.img"
    with pytest.raises(ComposeError) as info, atomic_output(target):
        pass
    assert info.value.message == (f"cannot write {target}: directory {target.parent} does not exist")
    assert "-o" in info.value.hint


def test_target_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(ComposeError, match=r"cannot write .*/out: Is a directory"):
        with atomic_output(tmp_path / "out") as out:
            out.write(b"x")
    assert _leftovers(tmp_path) == ["out"]


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt])
    try:
        yield mnt
    finally:
        run(["umount", mnt])


@pytest.mark.root
def test_no_space_left(tiny_tmpfs: Path) -> None:
    target = tiny_tmpfs / "initrd.img"
    with pytest.raises(ComposeError) as info, atomic_output(target) as out:
        out.write(b"\0" * (1 << 20))
    assert info.value.message == f"no space left on device writing {target}"
    assert "choose another -o" in info.value.hint
    assert _leftovers(tiny_tmpfs) == []


@pytest.mark.root
def test_no_space_left_while_streaming_a_compressed_cpio(tiny_tmpfs: Path) -> None:
    # The error surfaces inside libarchive's write callback and must still reach us intact.
    noise = random.Random(1).randbytes(1 << 20)
    target = tiny_tmpfs / "initrd.img"
    with pytest.raises(ComposeError, match="no space left on device writing"):
        with atomic_output(target) as out, compressing(out, "zstd") as sink:
            write_cpio([data_entry("noise", noise)], sink, 0)
    assert _leftovers(tiny_tmpfs) == []


@pytest.mark.root
def test_read_only_filesystem(tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", mnt])
    try:
        with pytest.raises(ComposeError) as info, atomic_output(mnt / "initrd.img"):
            pass
    finally:
        run(["umount", mnt])
    assert info.value.message == f"cannot write {mnt / 'initrd.img'}: Read-only file system"
    assert "writable directory" in info.value.hint


@pytest.mark.root
def test_permission_denied_for_unprivileged_user(tmp_path: Path) -> None:
    # Root bypasses permission checks, so try as 'nobody' in a forked child.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                with atomic_output(locked / "initrd.img"):
                    pass
            except ComposeError as exc:
                os.write(write_end, f"{exc.message}\n{exc.hint}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        reported = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    message, hint = reported.split("\n")
    assert message == f"cannot write {locked / 'initrd.img'}: Permission denied"
    assert "writable directory" in hint
    assert _leftovers(locked) == []
