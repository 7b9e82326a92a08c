from __future__ import annotations

import io
import os
import random
import shutil
from pathlib import Path

import libarchive
import pytest

from initrd_composer.errors import ComposeError
from initrd_composer.image.compression import compress_bytes, compressing
from initrd_composer.image.cpio_writer import cpio_bytes, write_cpio
from initrd_composer.image.entries import (
    Entry,
    chardev_entry,
    data_entry,
    dir_entry,
    symlink_entry,
)
from initrd_composer.image.reader import list_paths, open_image, parse_image, read_member
from initrd_composer.runner import run

EPOCH = 1_700_000_000
BIG = random.Random(7).randbytes(200_000)  # incompressible, spans many blocks


def _tool(name: str, package: str) -> str:
    """A command from a package scripts/setup installs: missing is a failure, not a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: scripts/setup installs {package}")
    return path


def _main_entries() -> list[Entry]:
    return [
        data_entry("init", b"#!/usr/bin/python3\nprint('hi')\n", mode=0o755),
        data_entry("usr/lib/big.bin", BIG),
        data_entry("etc/empty", b""),
        symlink_entry("bin", "usr/bin"),
        symlink_entry("lib64/ld-linux-x86-64.so.2", "/usr/lib64/ld-linux-x86-64.so.2"),
        chardev_entry("dev/console", 5, 1),
        chardev_entry("dev/null", 1, 3, mode=0o666),
        Entry(path="dev/sda", kind="blockdev", mode=0o660, rdev=(8, 0)),
        dir_entry("proc", 0o555),
    ]


def _early() -> bytes:
    return cpio_bytes([data_entry("kernel/x86/microcode/GenuineIntel.bin", b"ucode")], EPOCH)


def _image(tmp_path: Path, compression: str, early: bool = True, pad: int = 0) -> Path:
    out = io.BytesIO()
    if early:
        out.write(_early() + b"\0" * pad)
    with compressing(out, compression) as sink:
        write_cpio(_main_entries(), sink, EPOCH)
    path = tmp_path / f"initrd-{compression}.img"
    path.write_bytes(out.getvalue())
    return path


def test_round_trip_members(tmp_path: Path) -> None:
    image = open_image(_image(tmp_path, "zstd"))
    by_path = {m.path: m for m in image.members}
    assert by_path["init"].kind == "file" and by_path["init"].mode == 0o755
    assert image.read("init") == b"#!/usr/bin/python3\nprint('hi')\n"
    assert image.read("/usr/lib/big.bin") == BIG
    assert by_path["usr/lib/big.bin"].size == 200_000
    assert image.read("etc/empty") == b""
    assert by_path["bin"].kind == "symlink" and by_path["bin"].target == "usr/bin"
    assert by_path["lib64/ld-linux-x86-64.so.2"].target == "/usr/lib64/ld-linux-x86-64.so.2"
    assert by_path["dev/console"].kind == "chardev" and by_path["dev/console"].rdev == (5, 1)
    assert by_path["dev/null"].rdev == (1, 3) and by_path["dev/null"].mode == 0o666
    assert by_path["dev/sda"].kind == "blockdev" and by_path["dev/sda"].rdev == (8, 0)
    assert by_path["proc"].kind == "dir" and by_path["proc"].mode == 0o555
    assert by_path["usr"].kind == "dir" and by_path["usr"].mode == 0o755
    assert {(m.uid, m.gid, m.mtime) for m in image.members} == {(0, 0, EPOCH)}
    assert [s.compression for s in image.segments] == ["none", "zstd"]
    assert image.members[0].segment == 0 and image.members[-1].segment == 1


@pytest.mark.parametrize("compression", ["zstd", "xz", "gzip", "none"])
def test_segments_and_paths(tmp_path: Path, compression: str) -> None:
    image = open_image(_image(tmp_path, compression, pad=512))
    assert [s.compression for s in image.segments] == ["none", compression]
    assert image.segments[1].offset == image.segments[0].length + 512
    paths = image.paths()
    assert paths[:4] == [
        "kernel",
        "kernel/x86",
        "kernel/x86/microcode",
        "kernel/x86/microcode/GenuineIntel.bin",
    ]
    assert paths[4:] == sorted(paths[4:])
    assert image.read("kernel/x86/microcode/GenuineIntel.bin") == b"ucode"
    assert image.read("init").startswith(b"#!")


@pytest.mark.parametrize(("compression", "early"), [("zstd", True), ("gzip", False)])
def test_lsinitramfs_agrees(tmp_path: Path, compression: str, early: bool) -> None:
    lsinitramfs = _tool("lsinitramfs", "initramfs-tools")
    path = _image(tmp_path, compression, early=early)
    listed = run([lsinitramfs, path]).stdout.decode().splitlines()
    assert listed == list_paths(path)


def test_lsinitramfs_agrees_on_debians_own_initrd(debian_initrd: tuple[str, Path]) -> None:
    lsinitramfs = _tool("lsinitramfs", "initramfs-tools")
    path = debian_initrd[1]
    listed = run([lsinitramfs, path]).stdout.decode().splitlines()
    assert listed == list_paths(path)


def test_libarchive_agrees_on_main_segment(tmp_path: Path) -> None:
    path = _image(tmp_path, "xz")
    image = open_image(path)
    main = path.read_bytes()[image.segments[1].offset :]
    seen: dict[str, bytes] = {}
    with libarchive.memory_reader(main) as archive:
        for entry in archive:
            seen[entry.pathname] = b"".join(entry.get_blocks()) if entry.isreg else b""
    ours = [m for m in image.members if m.segment == 1]
    assert [m.path for m in ours] == list(seen)
    for member in ours:
        if member.kind == "file":
            assert image.read(member.path) == seen[member.path]


def test_two_uncompressed_archives_then_lz4(tmp_path: Path) -> None:
    lz4 = _tool("lz4", "lz4")
    main = tmp_path / "main.cpio"
    main.write_bytes(cpio_bytes(_main_entries(), EPOCH))
    run([lz4, "-q", "-l", "-f", main, tmp_path / "main.lz4"])  # the kernel's lz4 framing
    second = cpio_bytes([data_entry("early2", b"2")], EPOCH)
    path = tmp_path / "img"
    path.write_bytes(_early() + second + (tmp_path / "main.lz4").read_bytes())
    image = open_image(path)
    assert [s.compression for s in image.segments] == ["none", "none", "lz4"]
    assert read_member(path, "early2") == b"2"
    assert read_member(path, "usr/lib/big.bin") == BIG


def test_gnu_cpio_hardlinks_resolve(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(b"shared data")
    os.link(tree / "a", tree / "b")
    archive = run(["cpio", "-o", "-H", "newc", "--quiet"], input_bytes=b"a\nb\n", cwd=tree).stdout
    image = parse_image(archive, "hl")
    assert [m.nlink for m in image.members] == [2, 2]
    assert image.read("a") == image.read("b") == b"shared data"


def test_later_duplicate_wins() -> None:
    data = cpio_bytes([data_entry("x", b"old")], EPOCH) + cpio_bytes([data_entry("x", b"new")], EPOCH)
    image = parse_image(data)
    assert image.paths() == ["x", "x"]
    assert image.read("x") == b"new"


def test_member_errors(tmp_path: Path) -> None:
    path = _image(tmp_path, "gzip")
    with pytest.raises(ComposeError, match=f"{path}: no etc/missing in the image"):
        read_member(path, "etc/missing")
    with pytest.raises(ComposeError, match="dev/console is a chardev, not a file"):
        read_member(path, "dev/console")


def _corrupt_cases(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    good = _image(tmp_path, "zstd").read_bytes()
    early = _early()
    plain = cpio_bytes(_main_entries(), EPOCH)
    no_trailer = plain[: plain.rindex(b"070701")]
    bad_hex = bytearray(early)
    bad_hex[20] = ord("z")
    return {
        "truncated_compressed": (good[:-100], "truncated zstd data"),
        "trailing_garbage": (good + b"garbage!", "unrecognised data at offset"),
        "truncated_cpio": (plain[:5000], "truncated cpio member"),
        "bad_header": (bytes(bad_hex), "bad cpio header at offset 0"),
        "unaligned_cpio": (early + b"\0\0" + early, "unrecognised data at offset"),
        "missing_trailer_in_stream": (
            compress_bytes(no_trailer, "gzip"),
            "truncated cpio header",
        ),
        "not_an_initrd": (b"\x7fELF" + b"\1" * 100, "unrecognised data at offset 0"),
        "empty": (b"", "empty file, not an initrd"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated_compressed",
        "trailing_garbage",
        "truncated_cpio",
        "bad_header",
        "unaligned_cpio",
        "missing_trailer_in_stream",
        "not_an_initrd",
        "empty",
    ],
)
def test_corrupt_images_name_the_file(tmp_path: Path, case: str) -> None:
    data, message = _corrupt_cases(tmp_path)[case]
    path = tmp_path / f"{case}.img"
    path.write_bytes(data)
    with pytest.raises(ComposeError, match=message) as info:
        list_paths(path)
    assert info.value.message.startswith(str(path))


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"cannot read .*/nope\.img: No such file"):
        list_paths(tmp_path / "nope.img")
