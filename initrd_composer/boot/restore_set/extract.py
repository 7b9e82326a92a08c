"""Extract one archive of a restore set into a directory with libarchive, streaming.

The archive file is read once, through a hashing stream, so the sha256 check against the
manifest costs no second read (a tape or a slow NFS export is read once); a mismatch is
reported after the extraction, and the restored tree must then be considered garbage.
libarchive's own disk writer restores the metadata (owners, modes, times, ACLs, xattrs,
file flags, holes of sparse files) and refuses entries that would escape the directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.manifest import ArchiveRecord, name_text, path_xattrs

# libarchive's ARCHIVE_EXTRACT_* flags (libarchive.extract), spelled out because libarchive
# is imported only when extracting: the image's Python runs without site-packages until then.
EXTRACT_FLAGS = (
    0x0001  # OWNER (numeric: the archive has no user names)
    | 0x0002  # PERM
    | 0x0004  # TIME
    | 0x0020  # ACL
    | 0x0040  # FFLAGS
    | 0x0080  # XATTR
    | 0x0200  # SECURE_NODOTDOT
    | 0x10000  # SECURE_NOABSOLUTEPATHS
)
# Never write through a symlink: libarchive checks every component of every path on disk
# (some seven system calls an entry, a seventh of an extraction's CPU time). Onto an empty
# filesystem, the only symlinks are those the archive made, so _SymlinkGuard checks names
# against them instead; anywhere else libarchive's own check is on.
SECURE_SYMLINKS = 0x0100
# Not ARCHIVE_EXTRACT_SPARSE: that writes a file a filesystem block at a time to look for
# zeros. Holes come back anyway: the archive's sparse map leaves gaps libarchive seeks over.
_FRESH_NAMES = {"lost+found"}  # what a fresh mkfs leaves in a filesystem's root
_READ_BLOCK = 1 << 20


class Readable(Protocol):
    """What extract_stream() reads from: a file, a pipe, sources.http's HttpStream."""

    def readinto(self, buf: bytearray | memoryview, /) -> int | None: ...
    def read(self, size: int = -1, /) -> bytes | None: ...


class _HashingReader:
    """A read-only stream over a file that hashes what libarchive reads from it."""

    def __init__(self, f: Readable) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()

    def readinto(self, buf: bytearray | memoryview) -> int:
        n = self._f.readinto(buf)
        if n:
            self.sha256.update(memoryview(buf)[:n])
        return n or 0

    def seekable(self) -> bool:  # no seeking: the hash must see every byte once, in order
        return False

    def drain(self) -> str:
        """Hash what libarchive left unread (end-of-archive padding); the file's sha256."""
        while chunk := self._f.read(_READ_BLOCK):
            self.sha256.update(chunk)
        return self.sha256.hexdigest()


def extract_archive(archive_path: Path, dest: Path, record: ArchiveRecord | None = None) -> int:
    """Extract the archive file `archive_path` into the existing directory `dest`; return
    the entry count. With `record`, the file's sha256 must match it (RestoreSetError)."""
    label = record.file if record else Path(archive_path).name
    try:
        f = open(archive_path, "rb")  # closed by the with below
    except OSError as exc:
        raise RestoreSetError(f"cannot open archive {label}: {exc.strerror}", "check the medium") from exc
    with f:
        return extract_stream(f, dest, record, label=label)


def extract_stream(
    stream: Readable, dest: Path, record: ArchiveRecord | None = None, *, label: str = "archive",
    on_file: Callable[[str], None] | None = None,
) -> int:
    """The same from a stream read once, front to back (a tape, an HTTP body): `stream`
    needs only readinto() and read(); it is hashed only for `record`. `on_file` gets the name
    of each regular file (not a hard link) once it is written whole (ContentHasher.add)."""
    import libarchive  # noqa: PLC0415 - lazily, see EXTRACT_FLAGS
    import libarchive.ffi as la_ffi  # noqa: PLC0415
    from libarchive.exception import ArchiveError  # noqa: PLC0415

    count = 0
    where = ""  # for messages: the entry being written, or the last one written
    root: _RootEntry | None = None
    guard = _SymlinkGuard() if _is_fresh(dest) else None
    try:
        reader: _HashingReader | Readable = _HashingReader(stream) if record is not None else stream
        flags = EXTRACT_FLAGS | (0 if guard is not None else SECURE_SYMLINKS)
        with libarchive.stream_reader(reader, block_size=_READ_BLOCK) as archive, \
                contextlib.chdir(dest), _disk_writer(flags) as disk:
            for entry in archive:
                entry_p = entry._entry_p
                name = name_text(la_ffi.entry_pathname(entry_p) or b"?")
                where = f" at {name}"
                if name.rstrip("/") in (".", ""):
                    root = _RootEntry(entry_p)
                kind = la_ffi.entry_filetype(entry_p)
                hardlink = la_ffi.entry_hardlink(entry_p)
                if guard is not None:
                    guard.check(name, name_text(hardlink) if hardlink else None, symlink=kind == stat.S_IFLNK)
                _copy_entry(archive._pointer, disk, entry_p)
                if on_file is not None and kind == stat.S_IFREG and not hardlink:
                    on_file(name)
                count += 1
                where = f" after {name}"
        if root is not None:
            root.apply(Path(dest))
        digest = reader.drain() if isinstance(reader, _HashingReader) else ""
    except _ThroughSymlink as exc:
        raise RestoreSetError(
            f"cannot extract archive {label}{where}: it would be written through the symlink {exc}",
            "the archive is damaged or not a restore set's; use another copy of the restore set",
        ) from None
    except ArchiveError as exc:
        raise RestoreSetError(
            f"cannot extract archive {label}{where}: {exc.msg}",
            "the archive is damaged or truncated; use another copy of the restore set",
        ) from exc
    except OSError as exc:
        raise RestoreSetError(
            f"cannot extract archive {label}{where}: {exc}", "check the medium and the target"
        ) from exc
    if record is not None and digest != record.sha256:
        raise RestoreSetError(
            f"archive {record.file} ({record.name}) is corrupted: sha256 differs from the manifest",
            "the medium or the copy is damaged; use another copy of the restore set",
        )
    return count


def _is_fresh(dest: Path) -> bool:
    try:
        return set(os.listdir(dest)) <= _FRESH_NAMES
    except OSError:
        return False


class _ThroughSymlink(Exception):
    pass


class _SymlinkGuard:
    """libarchive's SECURE_SYMLINKS for an empty target, by name: an entry (or a hard link's
    target) below a symlink the archive made is refused before it is written."""

    def __init__(self) -> None:
        self._links: set[str] = set()

    def check(self, name: str, hardlink: str | None, *, symlink: bool) -> None:
        path = _plain(name)
        for checked in (path, _plain(hardlink) if hardlink else ""):
            cut = checked.find("/")
            while cut != -1:
                if checked[:cut] in self._links:
                    raise _ThroughSymlink(checked[:cut])
                cut = checked.find("/", cut + 1)
        if symlink:
            self._links.add(path)
        else:
            self._links.discard(path)  # libarchive replaces what was there


def _plain(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


@contextlib.contextmanager
def _disk_writer(flags: int) -> Iterator[ctypes.c_void_p]:
    import libarchive.extract as la_extract  # noqa: PLC0415
    import libarchive.ffi as la_ffi  # noqa: PLC0415

    # Closing the disk writer applies the deferred directory metadata (times, modes).
    with la_extract.new_archive_write_disk(flags) as disk:
        yield disk
        la_ffi.write_close(disk)


class _RootEntry:
    """The archive's root directory ("./"). libarchive leaves the metadata of a directory
    that already exists alone (the target is one: a mount point), so the root entry is
    extracted under a scratch name and its metadata, as libarchive restored it there, is
    moved onto the target after all other entries; the mtime last, as they change it."""

    SCRATCH = b".initrd-composer-root.tmp"

    def __init__(self, entry_p: ctypes.c_void_p) -> None:
        import libarchive.ffi as la_ffi  # noqa: PLC0415

        self.mtime_ns = la_ffi.entry_mtime(entry_p) * 1_000_000_000 + la_ffi.entry_mtime_nsec(entry_p)
        la_ffi.entry_copy_pathname(entry_p, self.SCRATCH)

    def apply(self, dest: Path) -> None:
        scratch = os.path.join(os.fsencode(dest), self.SCRATCH)
        st = os.lstat(scratch)
        os.chown(dest, st.st_uid, st.st_gid)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        wanted = dict(path_xattrs(scratch))
        for name, _value in path_xattrs(os.fsencode(dest)):
            if name not in wanted:
                os.removexattr(dest, name)
        for name, value in sorted(wanted.items()):  # ACLs are the system.posix_acl_* ones
            os.setxattr(dest, name, value)
        os.rmdir(scratch)
        os.utime(dest, ns=(self.mtime_ns, self.mtime_ns))


def _copy_entry(read_p: ctypes.c_void_p, disk: ctypes.c_void_p, entry_p: ctypes.c_void_p) -> None:
    """Write one entry's header and data blocks; offsets past holes keep files sparse."""
    import libarchive.ffi as la_ffi  # noqa: PLC0415

    buff, size, offset = ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_longlong()
    la_ffi.write_header(disk, entry_p)
    while la_ffi.read_data_block(read_p, ctypes.byref(buff), ctypes.byref(size), ctypes.byref(offset)) \
            != la_ffi.ARCHIVE_EOF:
        la_ffi.write_data_block(disk, buff, size, offset)
    la_ffi.write_finish_entry(disk)
