"""Capture a tree with every awkward kind of file into a restore set, extract it, verify it,
and compare with independent tools (rsync, getfattr, getfacl). Needs root (device nodes,
owners, file capabilities, a tmpfs mount) and the acl, attr, libcap2-bin and rsync tools."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.extract import extract_archive, extract_stream
from initrd_composer.boot.restore_set.manifest import (
    MANIFEST_NAME,
    Manifest,
    check_archive_file,
    check_extra,
    load_set,
    set_layout,
)
from initrd_composer.boot.restore_set.verify import VerifyError, compare_tree, verify_tree
from initrd_composer.capture.archive_write import excluded
from initrd_composer.capture.errors import CaptureError
from initrd_composer.capture.layout.document import new_layout
from initrd_composer.capture.set_writer import SetTree, write_set
from initrd_composer.runner import run

pytestmark = pytest.mark.root

GIB = 1 << 30
LONG_NAME = "n" * 255
UTF8_NAME = "é" * 127  # 254 bytes
TOOLS = ("setfacl", "getfacl", "getfattr", "setcap", "rsync")


def layout_of(trees: Sequence[tuple[str, Any]], *, unarchived: int = 0) -> dict[str, Any]:
    """A layout with one filesystem per tree naming its archive (and `unarchived` more)."""
    base = {"type": "ext4", "uuid": None, "label": None, "mountpoint": None, "features": None, "fstab": None}
    fss = [{**base, "device": f"/dev/vda{i + 1}", "archive": name} for i, (name, _root) in enumerate(trees)]
    fss += [{**fss[0], "device": f"/dev/vdb{i}", "archive": None} for i in range(unarchived)] if fss else []
    return new_layout(disks=[], md_arrays=[], volume_groups=[], filesystems=fss, fstab=None, bootloader={},
                      refused=[])  # fmt: skip


def capture(set_dir: Path, trees: Sequence[tuple[str, Path]], **options: Any) -> Manifest:
    return write_set(set_dir, trees, layout=layout_of(trees), **options)


@pytest.fixture(scope="module", autouse=True)
def _needs_root_and_tools() -> None:
    assert os.geteuid() == 0, "these tests create device nodes and chown: run them as root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"install them (apt-get install acl attr libcap2-bin rsync): {missing}"


def _build_tree(src: Path) -> None:
    src.mkdir()
    (src / "a").write_bytes(b"hello\n" * 1000)
    os.link(src / "a", src / "a-link")
    os.symlink("a", src / "sym")
    os.symlink("no/such/target", src / "dangling")
    os.mkfifo(src / "fifo", 0o640)
    os.link(src / "fifo", src / "fifo-link")  # hard links to a fifo and to a symlink too
    os.link(src / "sym", src / "sym-link", follow_symlinks=False)
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "loop9", 0o660 | stat.S_IFBLK, os.makedev(7, 9))
    with open(src / "sparse", "wb") as f:  # 1 GiB apparent, two small data extents
        f.truncate(GIB)
        f.seek(1 << 20)
        f.write(b"first")
        f.seek(GIB - 4096)
        f.write(b"last")
    (src / "d").mkdir(mode=0o2750)
    (src / "d" / LONG_NAME).write_bytes(b"long")
    (src / "d" / UTF8_NAME).write_bytes(b"utf8")
    with open(os.fsencode(src / "d") + b"/latin1-\xe9", "wb") as f:  # not UTF-8
        f.write(b"latin1")
    (src / "d" / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "d" / "setuid", 0o4755)
    os.chown(src / "d", 1234, 5678)
    os.chown(src / "d" / UTF8_NAME, 4321, 8765)
    os.setxattr(src / "a", "user.comment", b"kept")
    os.setxattr(src / "d", "user.empty", b"")
    os.setxattr(src / "d" / LONG_NAME, "user.bin", bytes(range(256)))
    run(["setcap", "cap_net_raw+ep", src / "d" / "setuid"])
    run(["setfacl", "-m", "u:1000:rwx,g:100:r", src / "a"])
    run(["setfacl", "-d", "-m", "g:55:rx", src / "d"])
    run(["setfacl", "-m", "u:7:rx", src])  # the root directory's own ACL and mtime too
    os.utime(src / "d" / LONG_NAME, ns=(1, 981_173_106_123_456_789))
    os.utime(src / "sym", ns=(1, 1_000_000_000_000_000_007), follow_symlinks=False)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fspath(src / "sock"))  # listed, not archived (pax cannot), not verified
    sock.close()
    (src / "skip-me.tmp").write_bytes(b"excluded")
    (src / "cache").mkdir()
    (src / "cache" / "big").write_bytes(b"excluded")
    os.utime(src, ns=(1, 1_500_000_000_123_456_789))


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Manifest]:
    base = tmp_path_factory.mktemp("restore-set")
    src = base / "src"
    _build_tree(src)
    _check_the_filesystem_keeps_xattrs_and_acls(src)
    times = os.stat(src).st_mtime_ns
    manifest = capture(base / "set", [("root", src)], excludes=["*.tmp", "cache"], threads=2)
    os.utime(src, ns=(1, times))  # (reading does not change it; keep the fixture honest)
    return src, base / "set", manifest


def _check_the_filesystem_keeps_xattrs_and_acls(src: Path) -> None:
    names = os.listxattr(src / "a")
    assert "user.comment" in names and "system.posix_acl_access" in names, names
    assert "security.capability" in os.listxattr(src / "d" / "setuid")


def _extracted(set_dir: Path, dest: Path) -> Manifest:
    manifest = load_set(set_dir)
    dest.mkdir()
    archive = manifest.archive("root")
    extract_archive(set_dir / archive.file, dest, archive)
    return manifest


def _dump(argv: list[str], paths: list[str], root: Path) -> str:
    return run([*argv, *paths], cwd=root).stdout.decode("utf-8", "surrogateescape")


def test_round_trip_restores_everything(captured: tuple[Path, Path, Manifest], tmp_path: Path) -> None:
    src, set_dir, written = captured
    dst = tmp_path / "dst"
    manifest = _extracted(set_dir, dst)
    assert manifest == written
    archive = manifest.archive("root")
    assert compare_tree(dst, archive) == []
    verify_tree(dst, archive)

    by_path = {r.path: r for r in archive.files}
    assert {r.type for r in archive.files} == {
        "dir", "file", "hardlink", "symlink", "char", "block", "fifo", "socket"
    }
    assert not (dst / "sock").exists()
    assert by_path["a-link"].link == "a" and by_path["dangling"].link == "no/such/target"
    assert by_path["null"].rdev == (1, 3) and by_path[f"d/{UTF8_NAME}"].uid == 4321
    assert by_path["d/latin1-\udce9"].size == 6
    assert by_path[f"d/{LONG_NAME}"].mtime_ns == 981_173_106_123_456_789
    assert not any(p.endswith(".tmp") or p.startswith("cache") for p in by_path)  # excludes

    # Independent witnesses: rsync (checksums, hard links, ACLs, xattrs, times, owners, devices).
    excluded = ["--exclude=/skip-me.tmp", "--exclude=/cache", "--exclude=/sock"]
    itemized = run(["rsync", "-naiHAXc", "--delete", *excluded, f"{src}/", f"{dst}/"]).stdout
    assert itemized == b""
    not_links = [r.path for r in archive.files if r.type not in ("symlink", "socket")]
    for argv in (["getfattr", "-h", "-d", "-m", "-", "--"], ["getfacl", "-P", "--"]):
        paths = [r.path for r in archive.files if r.type != "socket"] if argv[0] == "getfattr" else not_links
        assert _dump(argv, paths, dst) == _dump(argv, paths, src), argv[0]
    assert os.stat(dst).st_mtime_ns == os.stat(src).st_mtime_ns

    sparse = os.stat(dst / "sparse")
    assert sparse.st_size == GIB and sparse.st_blocks * 512 < (1 << 20), sparse.st_blocks
    assert os.stat(dst / "a").st_ino == os.stat(dst / "a-link").st_ino
    assert (set_dir / archive.file).stat().st_size < (1 << 20)  # the holes are not in the archive


def test_differences_are_listed_by_file(captured: tuple[Path, Path, Manifest], tmp_path: Path) -> None:
    _src, set_dir, _ = captured
    dst = tmp_path / "dst"
    archive = _extracted(set_dir, dst).archive("root")
    with open(dst / "a", "r+b") as f:  # same size and mtime, other content
        f.write(b"J")
    os.utime(dst / "a", ns=(1, os.stat(set_dir).st_mtime_ns))
    os.chmod(dst / "d" / LONG_NAME, 0o600)
    os.removexattr(dst / "d", "user.empty")
    (dst / "new").write_bytes(b"")
    (dst / "fifo").unlink()
    os.unlink(dst / "a-link")
    (dst / "a-link").write_bytes(b"hello\n" * 1000)
    with pytest.raises(VerifyError) as exc:
        verify_tree(dst, archive)
    found = {(m.path, m.what.split(" ")[0]) for m in exc.value.mismatches}
    assert {
        ("a", "content"), ("a", "mtime_ns"), (f"d/{LONG_NAME}", "mode"), ("d", "xattrs/ACLs"),
        ("new", "not"), ("fifo", "missing"), ("a-link", "not"),
    } <= found
    assert "restored root differs from the manifest" in exc.value.message


class _OnlyReads:
    """A stream that cannot seek or tell, like a tape or an HTTP body."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "rb")

    def readinto(self, buf: bytearray | memoryview) -> int | None:
        return self._f.readinto(buf)

    def read(self, size: int = -1) -> bytes:
        return self._f.read(size)

    def close(self) -> None:
        self._f.close()


def test_extract_from_a_stream(captured: tuple[Path, Path, Manifest], tmp_path: Path) -> None:
    _src, set_dir, manifest = captured
    archive = manifest.archive("root")
    stream = _OnlyReads(set_dir / archive.file)
    (tmp_path / "dst").mkdir()
    try:
        count = extract_stream(stream, tmp_path / "dst", archive, label=archive.file)
    finally:
        stream.close()
    assert count == len([r for r in archive.files if r.type != "socket"])
    verify_tree(tmp_path / "dst", archive)


def test_a_flipped_byte_names_the_archive(captured: tuple[Path, Path, Manifest], tmp_path: Path) -> None:
    _src, set_dir, _ = captured
    bad = tmp_path / "set"
    shutil.copytree(set_dir, bad)
    archive = load_set(bad).archive("root")
    path = bad / archive.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(RestoreSetError, match=r"archive root\.pax\.zst .*corrupted"):
        check_archive_file(bad, archive)
    (tmp_path / "dst").mkdir()
    with pytest.raises(RestoreSetError, match=r"root\.pax\.zst") as exc:
        extract_archive(path, tmp_path / "dst", archive)
    assert exc.value.hint


def test_a_set_without_manifest_is_refused(captured: tuple[Path, Path, Manifest], tmp_path: Path) -> None:
    _src, set_dir, _ = captured
    bad = tmp_path / "set"
    shutil.copytree(set_dir, bad)
    (bad / MANIFEST_NAME).unlink()
    with pytest.raises(RestoreSetError, match=r"incomplete: no manifest\.json"):
        load_set(bad)


def test_capture_stays_on_one_filesystem(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "mnt").mkdir(parents=True)
    (src / "top").write_bytes(b"top")
    run(["mount", "-t", "tmpfs", "none", src / "mnt"])
    try:
        (src / "mnt" / "other-fs").write_bytes(b"not captured")
        manifest = capture(tmp_path / "set", [("root", src)])
    finally:
        run(["umount", src / "mnt"])
    # The mount point is kept (an empty directory), not what is mounted on it.
    assert sorted(r.path for r in manifest.archive("root").files) == [".", "mnt", "top"]


def test_recapture_removes_the_old_manifest_first(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    capture(tmp_path / "set", [("root", src)])
    assert load_set(tmp_path / "set").archive("root").files[0].path == "."
    with pytest.raises(CaptureError, match="cannot archive"):  # the second capture fails
        capture(tmp_path / "set", [("root", tmp_path / "missing")])
    with pytest.raises(RestoreSetError, match="incomplete"):
        load_set(tmp_path / "set")


def test_exclude_patterns() -> None:
    patterns = ["*.tmp", "var/cache/*", "lost+found"]
    assert excluded("a/b/x.tmp", patterns) and excluded("x.tmp", patterns)
    assert excluded("var/cache/apt", patterns) and not excluded("var/cache", patterns)
    assert excluded("lost+found", patterns) and excluded("srv/lost+found", patterns)
    assert not excluded("var/lib/apt", patterns) and not excluded("tmp", patterns)


def test_restore_onto_a_fresh_ext4_mount_point(captured: tuple[Path, Path, Manifest], tmp_path: Path) -> None:
    """As in the rescue image: the target is the root of a new filesystem (an existing
    directory with lost+found), far smaller than the 1 GiB sparse file's apparent size."""
    _src, set_dir, manifest = captured
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    run(["mkfs.ext4", "-q", "-F", image])
    mnt.mkdir()
    run(["mount", "-o", "loop", image, mnt])
    try:
        archive = manifest.archive("root")
        extract_archive(set_dir / archive.file, mnt, archive)
        assert compare_tree(mnt, archive) == []  # lost+found is not a difference
        assert (mnt / "lost+found").is_dir()
        assert os.stat(mnt / "sparse").st_blocks * 512 < (1 << 20)
    finally:
        run(["umount", mnt])


def test_a_failed_capture_leaves_no_manifest_and_no_partial_archive(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "f").write_bytes(b"f")
    set_dir = tmp_path / "set"
    with pytest.raises(CaptureError, match="cannot archive"):
        capture(set_dir, [("root", good), ("boot", tmp_path / "missing")])
    # layout.json is written first; no manifest, no .part (root's archive, written at the same
    # time, is there if it was done before boot's failed, else stopped and removed)
    assert sorted(p.name for p in set_dir.iterdir() if p.name != "root.pax.zst") == ["layout.json"]
    with pytest.raises(RestoreSetError, match="incomplete: no manifest"):
        load_set(set_dir)
    with pytest.raises(CaptureError, match="same archive name"):
        capture(set_dir, [("root", good), ("root", good)])
    with pytest.raises(CaptureError, match="bad archive name"):
        capture(set_dir, [("../root", good)])
    with pytest.raises(CaptureError, match="names archive 'boot', which is not captured"):
        write_set(tmp_path / "other", [("root", good)], layout=layout_of([("root", good), ("boot", good)]))
    assert not (tmp_path / "other").exists()  # refused before anything is written


def test_layout_and_raw_files_are_in_the_set(tmp_path: Path) -> None:
    """layout.json and the collector's raw files are copied in, listed with their sha256."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    gaps = tmp_path / "gaps"
    gaps.mkdir()
    (gaps / "disk-vda-gap.bin").write_bytes(b"\x00" * 1000 + b"core.img")
    (gaps / "disk-vda-part1-bios-boot.bin").write_bytes(os.urandom(4096))
    layout = layout_of([("root", src)], unarchived=1)
    manifest = write_set(tmp_path / "set", [("root", src)], layout=layout,
                         extra_files=sorted(gaps.iterdir()))  # fmt: skip
    assert manifest == load_set(tmp_path / "set")
    files = [e.file for e in manifest.extras]
    assert files == ["layout.json", "disk-vda-gap.bin", "disk-vda-part1-bios-boot.bin"]
    for extra in manifest.extras:
        check_extra(tmp_path / "set", extra)
        if extra.file != "layout.json":
            assert (tmp_path / "set" / extra.file).read_bytes() == (gaps / extra.file).read_bytes()
            assert extra.sha256 == hashlib.sha256((gaps / extra.file).read_bytes()).hexdigest()
    assert set_layout(tmp_path / "set", manifest) == layout
    assert json.loads((tmp_path / "set" / "layout.json").read_text())["filesystems"][1]["archive"] is None
    with pytest.raises(CaptureError, match="two files of the set have the same name"):
        write_set(tmp_path / "set", [("root", src)], layout=layout,
                  extra_files=[gaps / "disk-vda-gap.bin"] * 2)  # fmt: skip


def test_progress_counts_file_data_not_holes_nor_files(
    captured: tuple[Path, Path, Manifest], tmp_path: Path
) -> None:
    src, _set_dir, _ = captured
    other = tmp_path / "other"
    other.mkdir()
    (other / "big").write_bytes(os.urandom(5 << 20))
    for i in range(500):
        (other / f"small{i}").write_bytes(b"s" * 100)
    seen: list[int] = []
    names: list[str] = []
    trees = [SetTree("root", src, ("/skip-me.tmp", "cache", "sock")), SetTree("other", other)]
    manifest = write_set(tmp_path / "set", trees, layout=layout_of([("root", src), ("other", other)]),
                         progress=seen.append, on_archive=lambda a: names.append(a.record.name))  # fmt: skip
    assert names == ["root", "other"]
    data = sum(r.size for r in manifest.archive("other").files if r.type == "file")
    assert seen == sorted(seen) and seen[-1] < data + (1 << 20)  # the 1 GiB sparse file's holes: not read
    assert seen[-1] >= data
    assert len(seen) <= 12  # about one call per MiB: none per small file
    assert not any(r.path in ("skip-me.tmp", "cache") for r in manifest.archive("root").files)


def test_anchored_exclude_patterns() -> None:
    assert excluded("tmp", ["/tmp"]) and not excluded("var/tmp", ["/tmp"]) and excluded("var/tmp", ["tmp"])
    assert excluded("srv/sets", ["/srv/sets"]) and not excluded("a/srv/sets", ["/srv/sets"])
    assert excluded("a[1]/b", ["/a[[]1]/b"]) and not excluded("a1/b", ["/a[[]1]/b"])
