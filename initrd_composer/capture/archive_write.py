"""Write one filesystem tree into a pax+zstd archive, gathering its manifest records.

libarchive's disk reader walks the tree (staying on one filesystem) and fills each entry
with the metadata, ACLs, xattrs, file flags and the sparse map; its pax writer stores them.
Each file is read once: the data blocks go to the archive and into the content sha256 in
the same pass, and the archive's own sha256 is computed as it is written. Holes (which the
disk reader skips) are fed as zeros: the pax writer drops them again, and the content
sha256 is that of the logical content, which a verifier can compute from any copy.
Owners are numeric only (no name lookup), as the rescue image has no passwd of the machine.
Progress costs one addition per data block and a call per MiB of data, nothing per file.
"""

from __future__ import annotations

import ctypes
import fnmatch
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import libarchive
import libarchive.ffi as la_ffi
import libarchive.flags as la_flags
from libarchive.exception import ArchiveError

from initrd_composer.boot.restore_set.manifest import (
    FileRecord,
    name_bytes,
    name_text,
    path_xattrs,
    xattr_digest,
)
from initrd_composer.capture.errors import CaptureError
from initrd_composer.capture.prefetch import Prefetcher

_BLOCK = 1 << 20
_ZEROS_VIEW = memoryview(bytes(_BLOCK))
_ZEROS_BUF = ctypes.create_string_buffer(_BLOCK)
_VIEW_BYTES = 1 << 30
_VIEW = ctypes.c_char * _VIEW_BYTES  # a window onto libarchive's buffers, never read past n
# libarchive functions libarchive-c does not declare (hard links, descending, sparse maps).
_lib = la_ffi.libarchive
_lib.archive_read_disk_can_descend.argtypes = [ctypes.c_void_p]
_lib.archive_read_disk_can_descend.restype = ctypes.c_int
_lib.archive_entry_copy_hardlink.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib.archive_entry_copy_hardlink.restype = None
_lib.archive_entry_sparse_clear.argtypes = [ctypes.c_void_p]
_lib.archive_entry_sparse_clear.restype = None
_lib.archive_entry_nlink.argtypes = [ctypes.c_void_p]
_lib.archive_entry_nlink.restype = ctypes.c_uint
_lib.archive_entry_dev.argtypes = [ctypes.c_void_p]
_lib.archive_entry_dev.restype = ctypes.c_uint64
_lib.archive_entry_ino64.argtypes = [ctypes.c_void_p]
_lib.archive_entry_ino64.restype = ctypes.c_int64
_lib.archive_entry_acl_count.argtypes = [ctypes.c_void_p, ctypes.c_int]
_lib.archive_entry_acl_count.restype = ctypes.c_int
_lib.archive_entry_xattr_reset.argtypes = [ctypes.c_void_p]
_lib.archive_entry_xattr_reset.restype = ctypes.c_int
_lib.archive_entry_xattr_next.argtypes = [
    ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_size_t),
]
_lib.archive_entry_xattr_next.restype = ctypes.c_int
_ACL_ALL = 0x3F00  # ARCHIVE_ENTRY_ACL_TYPE_POSIX1E | ARCHIVE_ENTRY_ACL_TYPE_NFS4

_TYPES = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
    stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
}


Progress = Callable[[int], None]  # bytes of file data read so far


@dataclass(frozen=True)
class WrittenArchive:
    sha256: str
    size: int
    files: tuple[FileRecord, ...]
    data_bytes: int = 0  # file data read (holes not counted)


def zstd_options(threads: int | None = None, level: int = 3) -> str:
    """libarchive write options: zstd level and worker threads, raw (binary) pax names so
    any byte string a filesystem allows survives whatever the locale."""
    n = threads if threads is not None else (os.cpu_count() or 1)
    return f"zstd:compression-level={level},zstd:threads={n},pax:hdrcharset=BINARY"


class Excluder:
    """fnmatch patterns against the path relative to the root ("var/cache/*"; as in fnmatch,
    `*` also matches "/"); a pattern without "/" matches a name at any depth ("*.tmp",
    "lost+found"); a leading "/" anchors a pattern at the root ("/tmp": the top-level tmp
    only, "/srv/sets": that path, not "a/srv/sets"). Compiled into two regular expressions,
    so a file costs two matches whatever the number of patterns."""

    def __init__(self, patterns: Sequence[str]) -> None:
        names = [p for p in patterns if "/" not in p]
        paths = [p.removeprefix("/") for p in patterns if "/" in p]
        self._name = re.compile("|".join(map(fnmatch.translate, names))) if names else None
        self._path = re.compile("|".join(map(fnmatch.translate, paths))) if paths else None
        self.active = bool(names or paths)

    def __call__(self, rel: str) -> bool:
        if self._path is not None and self._path.match(rel):
            return True
        return self._name is not None and self._name.match(rel.rpartition("/")[2]) is not None


def excluded(rel: str, patterns: Sequence[str]) -> bool:
    """Whether `rel` (relative to the root) is excluded by `patterns` (see Excluder)."""
    return Excluder(patterns)(rel)


def write_archive(
    root: Path, out: BinaryIO, *, excludes: Sequence[str] = (), threads: int | None = None,
    progress: Progress | None = None,
) -> WrittenArchive:
    """Archive the tree at `root` (one filesystem) into the open file `out`. `progress` is
    called with the bytes of file data read so far, every MiB or so and at the end."""
    sink = _HashingSink(out)
    records: list[FileRecord] = []
    try:
        with libarchive.custom_writer(sink.write, "pax", "zstd", block_size=_BLOCK,
                                      options=zstd_options(threads)) as archive, \
                _DiskWalk(root, excludes, progress) as walk:
            for rel, source in walk:
                records.append(walk.write_entry(archive._pointer, rel, source))
        if progress is not None:
            progress(walk.data_done)
    except ArchiveError as exc:
        if sink.error is not None:
            raise CaptureError(
                f"cannot write the archive of {root}: {sink.error.strerror}",
                "free space on the set directory's filesystem, or choose another directory",
            ) from exc
        raise CaptureError(f"cannot archive {root}: {exc.msg}", "check the tree is readable") from exc
    return WrittenArchive(sink.sha256.hexdigest(), sink.size, tuple(records), walk.data_done)


class _HashingSink:
    """libarchive's output callback: writes to the file and hashes what it writes."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None  # a ctypes callback must not raise: kept for later

    def write(self, data: ctypes.Array[ctypes.c_char]) -> int:
        try:
            self.out.write(data)
        except OSError as exc:
            self.error = exc
            return -1
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class _DiskWalk:
    """libarchive's disk reader over one tree: iterating gives (path relative to root,
    source path) with the entry filled in; excluded directories are not descended into,
    mount points are archived but not entered."""

    def __init__(self, root: Path, excludes: Sequence[str], progress: Progress | None = None) -> None:
        self.root = os.fsencode(os.path.abspath(root))
        self.excluder = Excluder(excludes)
        self.read_p = la_ffi.read_disk_new()
        self.entry_p = la_ffi.entry_new()
        self.first_name: dict[tuple[int, int], str] = {}  # inode -> first archived name
        self.progress = progress
        self.data_done = 0  # bytes of file data read
        self.next_report = _BLOCK
        self.prefetch: Prefetcher | None = None

    def __enter__(self) -> _DiskWalk:
        la_ffi.read_disk_set_behavior(self.read_p, la_flags.READDISK_NO_TRAVERSE_MOUNTS)
        la_ffi.read_disk_open(self.read_p, self.root)
        try:
            device = os.stat(self.root).st_dev
        except OSError:  # libarchive says what is wrong with the root, below
            self.prefetch = None
        else:
            self.prefetch = Prefetcher(device, lambda: self.data_done)
            self.prefetch.directory(self.root)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
        la_ffi.entry_free(self.entry_p)
        la_ffi.read_free(self.read_p)

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        while la_ffi.read_next_header2(self.read_p, self.entry_p) != la_ffi.ARCHIVE_EOF:
            source = la_ffi.entry_sourcepath(self.entry_p)
            rel_b = source[len(self.root):].lstrip(b"/") or b"."
            rel = name_text(rel_b)
            if rel != "." and self.excluder.active and self.excluder(rel):
                continue
            if _lib.archive_read_disk_can_descend(self.read_p):
                la_ffi.read_disk_descend(self.read_p)
                if self.prefetch is not None:
                    self.prefetch.directory(source)
            la_ffi.entry_copy_pathname(self.entry_p, rel_b)
            yield rel, source

    def write_entry(self, write_p: ctypes.c_void_p, rel: str, source: bytes) -> FileRecord:
        """Write the current entry (header, then the data of a regular file's first name)."""
        entry_p = self.entry_p
        mode = la_ffi.entry_mode(entry_p)
        kind = _TYPES.get(stat.S_IFMT(mode), "unknown")
        if kind == "socket":  # pax cannot hold one; listed so the manifest is the whole tree
            return self._record(rel, source, kind, 0, digest=None, link=None)
        size = la_ffi.entry_size(entry_p) if kind == "file" else 0
        first = self._hardlink_target(kind, rel)
        if first is not None:
            _lib.archive_entry_copy_hardlink(entry_p, name_bytes(first))
            _lib.archive_entry_sparse_clear(entry_p)
            la_ffi.entry_set_size(entry_p, 0)
        la_ffi.write_header(write_p, entry_p)
        digest = self._copy_data(write_p, size) if kind == "file" and first is None else None
        la_ffi.write_finish_entry(write_p)
        if first is not None:
            return self._record(rel, source, "hardlink", size, digest=None, link=first)
        link = name_text(la_ffi.entry_symlink(entry_p)) if kind == "symlink" else None
        return self._record(rel, source, kind, size, digest=digest, link=link)

    def _record(
        self, rel: str, source: bytes, kind: str, size: int, *, digest: str | None, link: str | None
    ) -> FileRecord:
        e = self.entry_p
        devnode = kind in ("char", "block")
        if _lib.archive_entry_acl_count(e, _ACL_ALL):
            # The mode as stat() gives it: with an ACL, libarchive's entry has the group
            # bits of the group:: entry, while the file's (and the restored file's) are the
            # mask; the ACL's own xattrs come from the file, as libarchive keeps them apart.
            mode, xattrs = stat.S_IMODE(os.lstat(source).st_mode), xattr_digest(path_xattrs(source))
        else:  # the disk reader has already read both: no second lstat/listxattr per file
            mode, xattrs = stat.S_IMODE(la_ffi.entry_mode(e)), xattr_digest(_entry_xattrs(e))
        return FileRecord(
            path=rel, type=kind, mode=mode, uid=la_ffi.entry_uid(e),
            gid=la_ffi.entry_gid(e), size=size,
            mtime_ns=la_ffi.entry_mtime(e) * 1_000_000_000 + la_ffi.entry_mtime_nsec(e),
            sha256=digest, link=link,
            rdev=(la_ffi.entry_rdevmajor(e), la_ffi.entry_rdevminor(e)) if devnode else None,
            xattr_sha256=xattrs,
        )

    def _hardlink_target(self, kind: str, rel: str) -> str | None:
        """The first archived name of this inode if this is a later name of it, else None."""
        if kind == "dir" or _lib.archive_entry_nlink(self.entry_p) < 2:
            return None
        key = (_lib.archive_entry_dev(self.entry_p), _lib.archive_entry_ino64(self.entry_p))
        first = self.first_name.get(key)
        if first is None:
            self.first_name[key] = rel
        return first

    def _copy_data(self, write_p: ctypes.c_void_p, size: int) -> str:
        """Copy the file's data blocks to the archive; the content sha256 (holes as zeros)."""
        h = hashlib.sha256()
        buff, length, offset = ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_longlong()
        done = 0
        while la_ffi.read_data_block(
            self.read_p, ctypes.byref(buff), ctypes.byref(length), ctypes.byref(offset)
        ) != la_ffi.ARCHIVE_EOF:
            done = _zeros(write_p, h, done, offset.value)
            if length.value:
                h.update(_in_place(buff.value, length.value))
                la_ffi.write_data(write_p, buff, length.value)
                done += length.value
                self.data_done += length.value
                if self.data_done >= self.next_report and self.progress is not None:
                    self.next_report = self.data_done + _BLOCK
                    self.progress(self.data_done)
        _zeros(write_p, h, done, size)
        return h.hexdigest()


def _entry_xattrs(entry_p: ctypes.c_void_p) -> Iterator[tuple[bytes, bytes]]:
    """The xattrs the disk reader put in the entry (it leaves out the POSIX ACL xattrs and
    XFS's ACL copies, which only a file with an ACL has)."""
    if not _lib.archive_entry_xattr_reset(entry_p):
        return
    name, value, size = ctypes.c_char_p(), ctypes.c_void_p(), ctypes.c_size_t()
    while _lib.archive_entry_xattr_next(
        entry_p, ctypes.byref(name), ctypes.byref(value), ctypes.byref(size)
    ) == 0:
        data = ctypes.string_at(value.value, size.value) if value.value else b""
        yield name.value or b"", data


def _in_place(address: int | None, n: int) -> memoryview | bytes:
    """libarchive's data block without copying it (valid until the next read_data_block),
    through one array type (a type per length would fill ctypes' type cache)."""
    if address is None or n > _VIEW_BYTES:
        return ctypes.string_at(address, n) if address is not None else b""
    return memoryview(_VIEW.from_address(address))[:n]


def _zeros(write_p: ctypes.c_void_p, h: hashlib._Hash, start: int, end: int) -> int:
    """Feed the hole [start, end) as zeros; the pax writer skips them per the sparse map."""
    while start < end:
        n = min(end - start, _BLOCK)
        h.update(_ZEROS_VIEW[:n])
        la_ffi.write_data(write_p, _ZEROS_BUF, n)
        start += n
    return end
