"""Compare a restored tree with the manifest's records of its archive.

Every file is checked: type, mode, owner, size, mtime, link target, device numbers, the
xattr/ACL digest, the content sha256 (streamed), and hard-link groups (a "hardlink" record
must share its target's inode; two other records must not share one). Names in the tree
that the manifest does not list are mismatches too. The walk stays on the tree's
filesystem. Memory grows with the number of files, never with their size.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.content_hashes import KnownContent
from initrd_composer.boot.restore_set.manifest import (
    ArchiveRecord,
    FileRecord,
    file_sha256,
    name_bytes,
    name_text,
    path_xattrs,
    xattr_digest,
)

# A fresh mkfs.ext4 makes lost+found; absent from the capture it is not a difference.
DEFAULT_IGNORED = ("lost+found",)

_FIELDS: tuple[str, ...] = (
    "mode", "uid", "gid", "size", "mtime_ns", "sha256", "link", "rdev", "xattr_sha256"
)
_HARDLINK_FIELDS: tuple[str, ...] = ("mode", "uid", "gid", "mtime_ns", "xattr_sha256")
_TYPES = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
    stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True)
class Mismatch:
    path: str
    what: str  # "missing", "not in the manifest", "mode 0644 != 0600", ...


class VerifyError(RestoreSetError):
    """The restored tree differs from the manifest; `mismatches` lists every difference."""

    def __init__(self, archive: str, mismatches: list[Mismatch]) -> None:
        shown = ", ".join(f"{m.path} ({m.what})" for m in mismatches[:5])
        more = f" and {len(mismatches) - 5} more" if len(mismatches) > 5 else ""
        super().__init__(
            f"restored {archive} differs from the manifest in {len(mismatches)} files: {shown}{more}",
            "the archive or the target filesystem is damaged; restore again from another copy",
        )
        self.mismatches = mismatches


def stat_record(
    path: bytes, rel: str, st: os.stat_result, with_content: bool = True, known: KnownContent | None = None
) -> FileRecord:
    """The record a file on disk would have as a non-hard-link entry; `known`: its content's
    sha256 as ContentHasher read it, used when the file has not changed since."""
    kind = _TYPES.get(stat.S_IFMT(st.st_mode), "unknown")
    digest = None
    if kind == "file" and with_content:
        digest = known.sha256 if known is not None and known.stands_for(st) else file_sha256(path)
    return FileRecord(
        path=rel, type=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        size=st.st_size if kind == "file" else 0, mtime_ns=st.st_mtime_ns,
        sha256=digest,
        link=name_text(os.readlink(path)) if kind == "symlink" else None,
        rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("char", "block") else None,
        xattr_sha256=xattr_digest(path_xattrs(path)),
    )


def compare_tree(
    root: Path, archive: ArchiveRecord, ignored: Iterable[str] = DEFAULT_IGNORED, *, content: bool = True,
    known: Mapping[str, KnownContent] | None = None,
) -> list[Mismatch]:
    """Every difference between the tree at `root` and `archive`'s records (empty: identical).
    content=False compares metadata only (size and mtime still catch a rewritten file): what
    the restore uses after its fix-ups, to list the files they changed without reading all.
    `known`: content hashes taken during the extraction (content_hashes), by path."""
    known = known or {}
    expected = {r.path: r for r in archive.files}
    mismatches: list[Mismatch] = []
    inode_of: dict[tuple[int, int], str] = {}  # inode -> the non-hardlink record holding it
    seen: set[str] = set()
    root_b = os.fsencode(root)
    for full, rel, st in _walk(root_b):
        seen.add(rel)
        rec = expected.get(rel)
        if rec is None:
            if rel not in ignored:
                mismatches.append(Mismatch(rel, "not in the manifest"))
            continue
        found = _compare_one(full, rec, st, root_b, inode_of, content=content, known=known.get(rel))
        mismatches.extend(found)
    for rel, rec in expected.items():
        if rel not in seen and rec.type != "socket":  # sockets are not archived (pax cannot)
            mismatches.append(Mismatch(rel, "missing"))
    return mismatches


def verify_tree(root: Path, archive: ArchiveRecord, ignored: Iterable[str] = DEFAULT_IGNORED) -> None:
    """Raise VerifyError listing the differences, if any."""
    mismatches = compare_tree(root, archive, ignored)
    if mismatches:
        raise VerifyError(archive.name, mismatches)


def _compare_one(
    full: bytes, rec: FileRecord, st: os.stat_result, root: bytes, inode_of: dict[tuple[int, int], str],
    *, content: bool = True, known: KnownContent | None = None,
) -> Iterator[Mismatch]:
    inode = (st.st_dev, st.st_ino)
    fields = _FIELDS
    if rec.type == "hardlink":
        assert rec.link is not None  # checked when the manifest was read
        try:
            target = os.lstat(os.path.join(root, name_bytes(rec.link)))
        except OSError:
            target = None
        if target is None or (target.st_dev, target.st_ino) != inode:
            yield Mismatch(rec.path, f"not a hard link to {rec.link}")
        # Content, link target and device numbers are the target's, checked there.
        actual = stat_record(full, rec.path, st, with_content=False)
        expected = replace(rec, type=actual.type)
        fields = _HARDLINK_FIELDS + (("size",) if actual.type == "file" else ())
    else:
        if stat.S_ISDIR(st.st_mode):
            pass  # directories cannot be hard-linked
        elif inode in inode_of:
            yield Mismatch(rec.path, f"hard-linked to {inode_of[inode]}, unlike in the manifest")
        else:
            inode_of[inode] = rec.path
        actual = stat_record(full, rec.path, st, with_content=rec.type == "file" and content, known=known)
        expected = rec if content else replace(rec, sha256=None)
    if actual.type != expected.type:
        yield Mismatch(rec.path, f"type {actual.type} != {expected.type}")
        return
    for name in fields:
        got, want = getattr(actual, name), getattr(expected, name)
        if got == want:
            continue
        if name == "sha256":
            yield Mismatch(rec.path, "content sha256 differs")
        elif name == "xattr_sha256":
            yield Mismatch(rec.path, "xattrs/ACLs differ")
        elif name == "mode":
            yield Mismatch(rec.path, f"mode {got:04o} != {want:04o}")
        else:
            yield Mismatch(rec.path, f"{name} {got} != {want}")


def _walk(root: bytes) -> Iterator[tuple[bytes, str, os.stat_result]]:
    """(full path, manifest name relative to root, lstat) of root and everything below it
    on its filesystem; bytes on disk, so names need not be valid in any locale."""
    st = os.lstat(root)
    yield root, ".", st
    device = st.st_dev
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            est = e.stat(follow_symlinks=False)
            rel = prefix + name_text(e.name)
            yield e.path, rel, est
            if stat.S_ISDIR(est.st_mode) and est.st_dev == device:
                stack.append((e.path, rel + "/"))
