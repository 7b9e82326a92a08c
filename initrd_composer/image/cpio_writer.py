"""Write image entries as one reproducible cpio 'newc' archive through libarchive.

Reproducibility rules: entries sorted by path (a parent sorts before its children), missing
parent directories added with mode 0755, uid/gid 0, nlink 1, inodes renumbered 1..N in
archive order, mtimes clamped to `epoch`. Content flows from disk to libarchive in whole-file
chunks, so the Python cost is per entry, not per byte.
"""

from __future__ import annotations

import ctypes
import io
import os
from collections.abc import Iterable

import libarchive
from libarchive import ffi
from libarchive.entry import ArchiveEntry
from libarchive.exception import ArchiveError

from initrd_composer.errors import ComposeError
from initrd_composer.image.compression import ByteSink
from initrd_composer.image.entries import Entry

# libarchive-c exposes no setter for these fields, and its `linkpath` setter stores a
# hardlink unless the entry already holds a symlink, so bind the C functions directly.
_set_ino = ffi.libarchive.archive_entry_set_ino64
_set_ino.argtypes = [ctypes.c_void_p, ctypes.c_int64]
_set_ino.restype = None
_set_nlink = ffi.libarchive.archive_entry_set_nlink
_set_nlink.argtypes = [ctypes.c_void_p, ctypes.c_uint]
_set_nlink.restype = None
_set_symlink = ffi.libarchive.archive_entry_update_symlink_utf8
_set_symlink.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_set_symlink.restype = ctypes.c_int

# libarchive hands the output to Python in blocks of this size; large blocks keep the
# number of callbacks (and of compressor calls) small.
_BLOCK_SIZE = 1 << 20


def _file_content(entry: Entry, epoch: int) -> tuple[bytes, int]:
    """A file entry's bytes and archive mtime: host mtime clamped to `epoch`."""
    if entry.data is not None:
        return entry.data, epoch
    assert entry.source is not None
    try:
        with entry.source.open("rb") as src:
            return src.read(), min(int(os.fstat(src.fileno()).st_mtime), epoch)
    except OSError as exc:
        raise ComposeError(
            f"cannot read {entry.source}: {exc.strerror}",
            "the file was planned into the image but is gone or unreadable now",
        ) from exc


def _same_member(a: Entry, b: Entry) -> bool:
    """True when two entries for one path would write identical archive members."""
    if (a.kind, a.mode, a.target, a.rdev) != (b.kind, b.mode, b.target, b.rdev):
        return False
    if a.kind != "file" or (a.source, a.data) == (b.source, b.data):
        return True
    return _file_content(a, 0)[0] == _file_content(b, 0)[0]


def _describe(entry: Entry) -> str:
    what = entry.origin or (str(entry.source) if entry.source else "generated data")
    return f"{entry.kind} from {what}"


def plan_archive(entries: Iterable[Entry]) -> list[Entry]:
    """The archive's members in write order: deduplicated, parents added, sorted by path.

    Raises ValueError for two different entries at one path, or for a path whose parent
    is not a directory in the plan (e.g. `lib` a symlink while `lib/x` is added).
    """
    by_path: dict[str, Entry] = {}
    for entry in entries:
        seen = by_path.get(entry.path)
        if seen is None:
            by_path[entry.path] = entry
        elif not _same_member(seen, entry):
            raise ValueError(
                f"conflicting image entries for {entry.path}: "
                f"{_describe(seen)} (mode {seen.mode:o}) vs {_describe(entry)} "
                f"(mode {entry.mode:o})"
            )
    for path in list(by_path):
        parent = path.rpartition("/")[0]
        while parent:
            existing = by_path.get(parent)
            if existing is None:
                by_path[parent] = Entry(path=parent, kind="dir", mode=0o755)
            elif existing.kind != "dir":
                raise ValueError(
                    f"image path {parent} is a {existing.kind} but {path} needs it to be a directory"
                )
            else:
                break  # its own parents were handled when it was added
            parent = parent.rpartition("/")[0]
    # Plain string order puts "a" before "a/b" (a prefix sorts first), and code-point
    # order equals UTF-8 byte order, so this is `LC_ALL=C sort` of the paths.
    return [by_path[path] for path in sorted(by_path)]


def write_cpio(entries: Iterable[Entry], out: ByteSink, epoch: int) -> None:
    """Write `entries` to `out` as a newc cpio archive, reproducibly (see module doc).

    Host files are read now. An OSError raised by `out.write` (e.g. ENOSPC) propagates
    unchanged; an unreadable source raises ComposeError; conflicting entries ValueError.
    """
    plan = plan_archive(entries)
    failures: list[BaseException] = []

    def sink(chunk: bytes) -> int:
        # An exception must not escape a ctypes callback (it would be printed and
        # swallowed); report failure to libarchive and re-raise it afterwards.
        try:
            out.write(chunk)
        except BaseException as exc:
            failures.append(exc)
            return -1
        return len(chunk)

    try:
        with libarchive.custom_writer(sink, "cpio_newc", block_size=_BLOCK_SIZE) as archive:
            _write_members(archive._pointer, plan, epoch)
    except ArchiveError as exc:
        if failures:
            raise failures[0] from None
        raise ComposeError(f"cannot write cpio archive: {exc.msg}") from exc
    if failures:
        raise failures[0]


def _write_members(archive_p: int, plan: list[Entry], epoch: int) -> None:
    meta = ArchiveEntry()
    entry_p = meta._entry_p
    for ino, entry in enumerate(plan, start=1):
        ffi.entry_clear(entry_p)
        data, mtime = _file_content(entry, epoch) if entry.kind == "file" else (b"", epoch)
        meta.modify(
            pathname=entry.path,
            filetype=entry.type_bits,
            perm=entry.mode & 0o7777,
            uid=0,
            gid=0,
            mtime=mtime,
            size=len(data),
        )
        if entry.kind == "symlink":
            _set_symlink(entry_p, entry.target.encode())
        elif entry.kind in ("chardev", "blockdev"):
            meta.rdevmajor, meta.rdevminor = entry.rdev
        _set_ino(entry_p, ino)
        _set_nlink(entry_p, 1)
        ffi.write_header(archive_p, entry_p)
        if data:
            ffi.write_data(archive_p, data, len(data))
        ffi.write_finish_entry(archive_p)


def cpio_bytes(entries: Iterable[Entry], epoch: int) -> bytes:
    """The archive `write_cpio` would write, in memory."""
    buf = io.BytesIO()
    write_cpio(entries, buf, epoch)
    return buf.getvalue()
