"""Restore data as one deterministic POSIX (pax) tar stream, for a tape file or an ISO.

This is backup data, so unlike the initrd it keeps what the source says: mode, numeric
uid/gid, mtime to the nanosecond (a pax `mtime` record when it has a fraction), symlinks,
hardlinks, device nodes and FIFOs. Entry names are relative, the root first as `.`, then a
depth-first walk, and user/group names are left out so an extraction inside a rescue
system (whose /etc/passwd is not the machine's) restores the numbers. Sockets cannot be
archived and are listed in `skipped`.

In each directory the files come first: a restore set's manifest and layout, then the
others smallest first (then by name), and the subdirectories after them. A tape is read
front to back, so the restore reaches a set's manifest and layout without reading an
archive, and its archives one after the other (boot/sources/tape_set.py).

The size is known before anything is written (`plan_archive`), so a medium's capacity is
checked up front; the stream is then written once (`write_archive`) without a temp copy.
"""

from __future__ import annotations

import decimal
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from initrd_composer.boot.restore_set.layout import LAYOUT_NAME
from initrd_composer.boot.restore_set.manifest import MANIFEST_NAME
from initrd_composer.errors import ComposeError

# What a restore reads before any archive, in the order it reads them: first on the tape.
SET_FIRST = (MANIFEST_NAME, LAYOUT_NAME)
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


@dataclass(frozen=True)
class ArchiveEntry:
    source: Path
    info: tarfile.TarInfo


@dataclass(frozen=True)
class ArchivePlan:
    root: Path
    entries: tuple[ArchiveEntry, ...]
    size: int  # bytes of the tar stream, end-of-archive blocks and record padding included
    skipped: tuple[str, ...]  # names that cannot be archived (sockets)


def padded(size: int, block: int) -> int:
    """`size` rounded up to whole `block`s."""
    return -(-size // block) * block


def _mtime(info: tarfile.TarInfo, mtime_ns: int) -> None:
    seconds, fraction = divmod(mtime_ns, 1_000_000_000)
    info.mtime = seconds
    if fraction:  # the ustar field holds whole seconds; pax keeps the rest
        exact = decimal.Decimal(mtime_ns).scaleb(-9)
        info.pax_headers = {"mtime": format(exact.normalize(), "f")}


def _tarinfo(path: Path, name: str, st: os.stat_result, links: dict[tuple[int, int], str]) -> (
        tarfile.TarInfo | None):
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    _mtime(info, st.st_mtime_ns)
    key = (st.st_dev, st.st_ino)
    if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in links:
        info.type, info.linkname = tarfile.LNKTYPE, links[key]
        return info
    if stat.S_ISREG(st.st_mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    else:
        return None
    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
        links[key] = name
    return info


def _walk(directory: Path, prefix: str) -> Iterator[tuple[Path, str, os.stat_result]]:
    """(path, archive name, lstat) of everything below `directory`, each entry followed by
    its subtree: the files first (a set's manifest and layout, then by size and name), then
    the subdirectories by name."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise ComposeError(f"cannot list {directory}: {exc.strerror}",
                           "make the data directory readable (run as root for system files)") from exc
    children: list[tuple[Path, str, os.stat_result]] = []
    for child in names:
        path = directory / child
        try:
            children.append((path, child, path.lstat()))
        except OSError as exc:
            raise ComposeError(f"cannot read {path}: {exc.strerror}", "make the data readable") from exc
    for path, child, st in sorted(children, key=_walk_order):
        yield path, prefix + child, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(path, f"{prefix}{child}/")


def _walk_order(child: tuple[Path, str, os.stat_result]) -> tuple[bool, int, int, bytes]:
    _path, name, st = child
    if stat.S_ISDIR(st.st_mode):
        return True, 0, 0, os.fsencode(name)
    rank = SET_FIRST.index(name) if name in SET_FIRST else len(SET_FIRST)
    return False, rank, st.st_size, os.fsencode(name)


def plan_archive(root: Path) -> ArchivePlan:
    """Every entry under `root` with its tar header, and the exact size of the stream."""
    root = Path(root)
    if not root.is_dir():
        raise ComposeError(f"data directory {root} does not exist", "give --data an existing directory")
    links: dict[tuple[int, int], str] = {}
    entries: list[ArchiveEntry] = []
    skipped: list[str] = []
    size = 0
    for path, name, st in [(root, ".", root.stat()), *_walk(root, "")]:
        info = _tarinfo(path, name, st, links)
        if info is None:
            skipped.append(name)
            continue
        entries.append(ArchiveEntry(path, info))
        # What TarFile.addfile writes: the header blocks, then the content padded to 512.
        size += len(info.tobuf(tarfile.PAX_FORMAT, _ENCODING, _ERRORS)) + padded(info.size, tarfile.BLOCKSIZE)
    # TarFile.close: two zero blocks, then zeros up to a whole record (20 blocks).
    size = padded(size + 2 * tarfile.BLOCKSIZE, tarfile.RECORDSIZE)
    return ArchivePlan(root, tuple(entries), size, tuple(skipped))


class Writable(Protocol):
    """All the archive needs of its output: a file, a BytesIO, a tape block sink."""

    def write(self, data: bytes, /) -> int: ...


class _Counter:
    """Passes writes through and counts them."""

    def __init__(self, out: Writable) -> None:
        self.out = out
        self.count = 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.count += len(data)
        return len(data)


def write_archive(plan: ArchivePlan, out: Writable) -> int:
    """Write the planned tar stream to `out`; returns its size (== plan.size). A file that
    changed size since planning is an error: the capacity check relied on that size."""
    counter = _Counter(out)
    with tarfile.open(fileobj=counter, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                      encoding=_ENCODING, errors=_ERRORS) as tar:
        for entry in plan.entries:
            if entry.info.type != tarfile.REGTYPE:
                tar.addfile(entry.info)
                continue
            try:
                with open(entry.source, "rb") as f:
                    if os.fstat(f.fileno()).st_size != entry.info.size:
                        raise OSError(0, "unexpected end of data")
                    tar.addfile(entry.info, f)
            except OSError as exc:
                if exc.errno in (0, None):  # tarfile's own short-read error
                    raise ComposeError(f"{entry.source} changed size while the data was archived",
                                       "archive a quiescent copy (a snapshot) of the data") from exc
                raise ComposeError(f"cannot read {entry.source}: {exc.strerror}",
                                   "make the data readable (run as root for system files)") from exc
    if counter.count != plan.size:
        raise ComposeError(f"the data archive of {plan.root} came out {counter.count} bytes, "
                           f"planned {plan.size}", "the data changed while it was archived: try again")
    return counter.count
