from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import libarchive
import pytest

from initrd_composer.errors import ComposeError
from initrd_composer.image.cpio_writer import cpio_bytes, plan_archive, write_cpio
from initrd_composer.image.entries import (
    Entry,
    chardev_entry,
    data_entry,
    dir_entry,
    file_entry,
    symlink_entry,
)
from initrd_composer.image.reader import parse_image
from initrd_composer.runner import run

EPOCH = 1_700_000_000


def _sample(tmp_path: Path) -> list[Entry]:
    host = tmp_path / "host"
    host.mkdir()
    (host / "tool").write_bytes(b"\x7fELF tool")
    (host / "tool").chmod(0o755)
    os.utime(host / "tool", (EPOCH - 1000, EPOCH - 1000))
    (host / "new.conf").write_text("fresh\n")
    os.utime(host / "new.conf", (EPOCH + 5000, EPOCH + 5000))
    return [
        data_entry("init", b"#!/usr/bin/python3\n", mode=0o755),
        file_entry("usr/bin/tool", host / "tool"),
        file_entry("etc/new.conf", host / "new.conf"),
        symlink_entry("bin", "usr/bin"),
        chardev_entry("dev/console", 5, 1),
        chardev_entry("dev/null", 1, 3, mode=0o666),
        Entry(path="dev/sda", kind="blockdev", mode=0o660, rdev=(8, 0)),
        dir_entry("proc", 0o555),
        data_entry("empty", b""),
    ]


def _read_with_libarchive(data: bytes) -> dict[str, dict[str, object]]:
    members: dict[str, dict[str, object]] = {}
    with libarchive.memory_reader(data) as archive:
        for e in archive:
            members[e.pathname] = {
                "type": stat.S_IFMT(e.mode),
                "perm": e.perm,
                "uid": e.uid,
                "gid": e.gid,
                "mtime": e.mtime,
                "rdev": (e.rdevmajor, e.rdevminor),
                "link": e.linkpath if e.issym else None,
                "data": b"".join(e.get_blocks()) if e.isreg else None,
            }
    return members


def test_plan_adds_parents_sorts_and_dedupes() -> None:
    plan = plan_archive(
        [
            data_entry("usr/lib/b", b"x"),
            data_entry("etc/a", b"y"),
            data_entry("usr/lib/b", b"x"),  # same member twice: kept once
            dir_entry("usr", 0o700),  # explicit mode wins over the default 0755
            data_entry("usr-x", b"z"),
        ]
    )
    assert [(e.path, e.kind, oct(e.mode)) for e in plan] == [
        ("etc", "dir", "0o755"),
        ("etc/a", "file", "0o644"),
        ("usr", "dir", "0o700"),
        ("usr-x", "file", "0o644"),
        ("usr/lib", "dir", "0o755"),
        ("usr/lib/b", "file", "0o644"),
    ]


def test_duplicate_with_same_bytes_from_different_sources_is_deduped(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    plan = plan_archive([file_entry("x", a, 0o644), file_entry("x", b, 0o644)])
    assert [e.path for e in plan] == ["x"]


@pytest.mark.parametrize(
    "second",
    [
        data_entry("x", b"other"),
        data_entry("x", b"same", mode=0o755),
        symlink_entry("x", "y"),
    ],
)
def test_conflicting_duplicate_raises(second: Entry) -> None:
    with pytest.raises(ValueError, match="conflicting image entries for x"):
        plan_archive([data_entry("x", b"same"), second])


def test_non_directory_parent_raises() -> None:
    with pytest.raises(ValueError, match=r"lib is a symlink but lib/modules/m\.ko needs it"):
        plan_archive([symlink_entry("lib", "usr/lib"), data_entry("lib/modules/m.ko", b"")])


def test_members_metadata_via_libarchive(tmp_path: Path) -> None:
    data = cpio_bytes(_sample(tmp_path), EPOCH)
    members = _read_with_libarchive(data)
    assert list(members) == [
        "bin",
        "dev",
        "dev/console",
        "dev/null",
        "dev/sda",
        "empty",
        "etc",
        "etc/new.conf",
        "init",
        "proc",
        "usr",
        "usr/bin",
        "usr/bin/tool",
    ]
    assert all(m["uid"] == 0 and m["gid"] == 0 for m in members.values())
    assert members["bin"]["link"] == "usr/bin"
    assert members["bin"]["type"] == stat.S_IFLNK
    assert members["dev/console"]["type"] == stat.S_IFCHR
    assert members["dev/console"]["rdev"] == (5, 1)
    assert members["dev/null"]["rdev"] == (1, 3)
    assert members["dev/null"]["perm"] == 0o666
    assert members["dev/sda"]["type"] == stat.S_IFBLK
    assert members["dev/sda"]["rdev"] == (8, 0)
    assert members["proc"]["perm"] == 0o555
    assert members["usr"]["perm"] == 0o755
    assert members["usr/bin/tool"]["perm"] == 0o755
    assert members["usr/bin/tool"]["data"] == b"\x7fELF tool"
    assert members["empty"]["data"] == b""
    # mtime: older host files keep theirs, newer ones and generated members get the epoch.
    assert members["usr/bin/tool"]["mtime"] == EPOCH - 1000
    assert members["etc/new.conf"]["mtime"] == EPOCH
    assert members["init"]["mtime"] == EPOCH
    assert members["dev"]["mtime"] == EPOCH


def test_inodes_renumbered_and_nlink_one(tmp_path: Path) -> None:
    image = parse_image(cpio_bytes(_sample(tmp_path), EPOCH))
    assert [m.ino for m in image.members] == list(range(1, len(image.members) + 1))
    assert {m.nlink for m in image.members} == {1}


def test_reproducible_regardless_of_input_order(tmp_path: Path) -> None:
    entries = _sample(tmp_path)
    first = cpio_bytes(entries, EPOCH)
    assert cpio_bytes(list(reversed(entries)), EPOCH) == first
    assert cpio_bytes(entries, EPOCH + 1) != first


def test_source_read_at_write_time(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"planned")
    entry = file_entry("f", src)
    src.write_bytes(b"changed later")
    assert _read_with_libarchive(cpio_bytes([entry], EPOCH))["f"]["data"] == b"changed later"


def test_missing_source_names_the_file(tmp_path: Path) -> None:
    src = tmp_path / "gone"
    src.write_bytes(b"x")
    entry = file_entry("gone", src)
    src.unlink()
    with pytest.raises(ComposeError, match=f"cannot read {src}: No such file"):
        cpio_bytes([entry], EPOCH)


def test_output_error_propagates_unchanged() -> None:
    class Full:
        def write(self, data: bytes, /) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        write_cpio([data_entry("big", b"x" * (3 << 20))], Full(), EPOCH)
    assert info.value.errno == errno.ENOSPC


def test_gnu_cpio_and_bsdcpio_list_the_same_members(tmp_path: Path) -> None:
    archive = tmp_path / "a.cpio"
    archive.write_bytes(cpio_bytes(_sample(tmp_path), EPOCH))
    ours = parse_image(archive.read_bytes()).paths()
    gnu = run(["cpio", "-it", "--quiet", "-F", archive]).stdout.decode().splitlines()
    assert gnu == ours
    bsd = run(["bsdcpio", "-it", "-F", archive]).stdout.decode().splitlines()  # libarchive-tools
    assert bsd == ours
    verbose = run(["cpio", "-itv", "--quiet", "-F", archive]).stdout.decode()
    assert "5,   1" in verbose  # GNU cpio shows the console's device numbers


@pytest.mark.root
def test_gnu_cpio_extracts_device_nodes(tmp_path: Path) -> None:
    archive = tmp_path / "a.cpio"
    archive.write_bytes(cpio_bytes(_sample(tmp_path), EPOCH))
    out = tmp_path / "out"
    out.mkdir()
    run(["cpio", "-idm", "--quiet", "-F", archive], cwd=out)
    console = os.lstat(out / "dev/console")
    assert stat.S_ISCHR(console.st_mode)
    assert (os.major(console.st_rdev), os.minor(console.st_rdev)) == (5, 1)
    null = os.lstat(out / "dev/null")
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert (out / "dev/null").read_bytes() == b""  # a real, working /dev/null
    assert os.readlink(out / "bin") == "usr/bin"
    assert (out / "usr/bin/tool").stat().st_mtime == EPOCH - 1000
