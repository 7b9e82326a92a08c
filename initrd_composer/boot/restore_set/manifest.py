"""The manifest of a restore set: its records, JSON form, validation and version check.

`manifest.json` is written last (by the capture side, atomically), so a set directory
without one is an interrupted capture and is refused, never half-restored. Besides the
archives it lists the set's other files (`extras`: `layout.json` and the raw boot-code
files), each with its sha256, and a set without `layout.json` is refused: a restore needs it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.layout import LAYOUT_NAME, load_layout
from initrd_composer.boot.restore_set.location import SetLocation, location_of

FORMAT = "initrd-composer-restore-set"
VERSION = 1
MANIFEST_NAME = "manifest.json"
ARCHIVE_SUFFIX = ".pax.zst"
FILE_TYPES = ("file", "dir", "symlink", "hardlink", "char", "block", "fifo", "socket")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRecord:
    """One file of an archive. `path` is relative to the archive's root ("." is the root
    itself); `link` is a symlink's target or, for "hardlink", the path of the first name of
    the inode (which carries the content). `size` and `sha256` are those of the content
    (regular files and hard links; 0 and None otherwise); `rdev` (major, minor) is set for
    char/block devices. `xattr_sha256` is `xattr_digest()` of all xattrs, ACLs included."""

    path: str
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    sha256: str | None = None
    link: str | None = None
    rdev: tuple[int, int] | None = None
    xattr_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "sha256": self.sha256,
            "link": self.link,
            "rdev": list(self.rdev) if self.rdev else None,
            "xattr_sha256": self.xattr_sha256,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> FileRecord:
        if not isinstance(data, dict):
            raise _invalid(f"{where}: a file record must be an object")
        rec = cls(
            path=_field(data, "path", str, where),
            type=_field(data, "type", str, where),
            mode=_field(data, "mode", int, where),
            uid=_field(data, "uid", int, where),
            gid=_field(data, "gid", int, where),
            size=_field(data, "size", int, where),
            mtime_ns=_field(data, "mtime_ns", int, where),
            sha256=_field(data, "sha256", str, where, optional=True),
            link=_field(data, "link", str, where, optional=True),
            rdev=_rdev(data.get("rdev"), where),
            xattr_sha256=_field(data, "xattr_sha256", str, where),
        )
        rec.check(where)
        return rec

    def check(self, where: str) -> None:
        """The record's own consistency (what JSON types alone do not say)."""
        if self.type not in FILE_TYPES:
            raise _invalid(f"{where}: unknown file type {self.type!r}")
        if self.path != "." and (self.path.startswith("/") or ".." in self.path.split("/")):
            raise _invalid(f"{where}: path {self.path!r} leaves the archive root")
        if (self.type == "file") != (self.sha256 is not None) and self.type != "hardlink":
            raise _invalid(f"{where}: {self.path}: sha256 is for regular files only")
        if (self.type in ("symlink", "hardlink")) != (self.link is not None):
            raise _invalid(f"{where}: {self.path}: link is for symlinks and hard links only")
        if (self.type in ("char", "block")) != (self.rdev is not None):
            raise _invalid(f"{where}: {self.path}: rdev is for device nodes only")


@dataclass(frozen=True)
class ArchiveRecord:
    """One archive of the set: `name` (the filesystem's name in the layout), `file` (its
    file name in the set directory), the sha256 and size of that file, and its files."""

    name: str
    file: str
    sha256: str
    size: int
    files: tuple[FileRecord, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> ArchiveRecord:
        if not isinstance(data, dict):
            raise _invalid(f"{where}: an archive record must be an object")
        name = _field(data, "name", str, where)
        file = _field(data, "file", str, where)
        if "/" in file or file in ("", ".", ".."):
            raise _invalid(f"{where}: archive file {file!r} is not a plain file name")
        files = data.get("files")
        if not isinstance(files, list):
            raise _invalid(f"{where}: files must be a list")
        records = tuple(FileRecord.from_json(f, f"{where} ({name}) file {i}") for i, f in enumerate(files))
        paths = [r.path for r in records]
        if len(set(paths)) != len(paths):
            raise _invalid(f"{where} ({name}): a path is listed twice")
        known = set(paths)
        for rec in records:
            if rec.type == "hardlink" and rec.link not in known:
                raise _invalid(f"{where} ({name}): {rec.path}: hard link to unlisted {rec.link}")
        return cls(name, file, _field(data, "sha256", str, where), _field(data, "size", int, where), records)


@dataclass(frozen=True)
class ExtraRecord:
    """A file of the set that is not an archive: `layout.json`, `disk-NAME-gap.bin`,
    `disk-NAME-partN-bios-boot.bin`; its plain file name, sha256 and size."""

    file: str
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_json(cls, data: Any, where: str) -> ExtraRecord:
        if not isinstance(data, dict):
            raise _invalid(f"{where}: an extra record must be an object")
        file = _plain_name(_field(data, "file", str, where), where)
        return cls(file, _field(data, "sha256", str, where), _field(data, "size", int, where))


@dataclass(frozen=True)
class Manifest:
    archives: tuple[ArchiveRecord, ...]
    extras: tuple[ExtraRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "archives": [a.to_json() for a in self.archives],
            "extras": [e.to_json() for e in self.extras],
        }

    def extra(self, file: str) -> ExtraRecord:
        for e in self.extras:
            if e.file == file:
                return e
        raise RestoreSetError(
            f"restore set has no file {file!r}",
            f"it lists: {', '.join(e.file for e in self.extras) or 'none'}",
        )

    def archive(self, name: str) -> ArchiveRecord:
        for a in self.archives:
            if a.name == name:
                return a
        raise RestoreSetError(
            f"restore set has no archive named {name!r}",
            f"it has: {', '.join(a.name for a in self.archives) or 'none'}",
        )

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise _invalid(f"not a restore-set manifest (format is not {FORMAT!r})")
        version = data.get("version")
        if version != VERSION:
            raise RestoreSetError(
                f"restore-set manifest version {version!r} is not supported (this image reads {VERSION})",
                "restore with a rescue image of the same initrd-composer release as the capture",
            )
        archives = data.get("archives")
        if not isinstance(archives, list):
            raise _invalid("manifest: archives must be a list")
        records = tuple(ArchiveRecord.from_json(a, f"archive {i}") for i, a in enumerate(archives))
        for attr in ("name", "file"):
            values = [getattr(a, attr) for a in records]
            if len(set(values)) != len(values):
                raise _invalid(f"manifest: two archives have the same {attr}")
        extras = data.get("extras")
        if not isinstance(extras, list):
            raise _invalid("manifest: extras must be a list")
        extra_records = tuple(ExtraRecord.from_json(e, f"extra {i}") for i, e in enumerate(extras))
        files = [a.file for a in records] + [e.file for e in extra_records]
        if len(set(files)) != len(files) or MANIFEST_NAME in files:
            raise _invalid("manifest: two files of the set have the same name")
        return cls(records, extra_records)


def dumps(manifest: Manifest) -> bytes:
    """The manifest file's bytes: ASCII JSON (non-ASCII and undecodable names escaped)."""
    return json.dumps(manifest.to_json(), indent=1, ensure_ascii=True).encode("ascii") + b"\n"


def loads(data: bytes) -> Manifest:
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"manifest is not valid JSON: {exc}") from exc
    return Manifest.from_json(parsed)


def load_set(set_dir: Path | SetLocation) -> Manifest:
    """Read a set's manifest (a directory, or any SetLocation); a set without one is refused
    (an interrupted capture), and so is one whose listed archives and extras are not all
    there, or that has no layout.json (a restore cannot recreate the disks without it)."""
    where = location_of(set_dir)
    try:
        data = where.read(MANIFEST_NAME)
    except FileNotFoundError:
        raise RestoreSetError(
            f"restore set {where.shown} is incomplete: no {MANIFEST_NAME}",
            "the capture did not finish (the manifest is written last); capture the machine again",
        ) from None
    except OSError as exc:
        raise RestoreSetError(
            f"cannot read {MANIFEST_NAME} of {where.shown}: {exc.strerror or exc}", "check the medium"
        ) from exc
    manifest = loads(data)
    if LAYOUT_NAME not in (e.file for e in manifest.extras):
        raise RestoreSetError(
            f"restore set {where.shown} is incomplete: no {LAYOUT_NAME} in its manifest",
            "a restore needs the machine's layout: capture it with compose-initrd capture",
        )
    try:
        missing = where.missing([a.file for a in manifest.archives] + [e.file for e in manifest.extras])
    except OSError as exc:
        raise RestoreSetError(f"cannot list restore set {where.shown}: {exc.strerror or exc}",
                              "check the medium") from exc  # fmt: skip
    if missing:
        raise RestoreSetError(
            f"restore set {where.shown} is incomplete: missing {', '.join(missing)}",
            "copy the whole set directory, or capture the machine again",
        )
    return manifest


def name_text(raw: bytes) -> str:
    """A file name or link target as the manifest holds it: UTF-8, bytes that are not UTF-8
    as surrogate escapes (whatever the locale of the capture or of the rescue image)."""
    return raw.decode("utf-8", "surrogateescape")


def name_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def file_sha256(path: Path | str | bytes) -> str:
    """sha256 of a file's content, streamed in bounded memory; holes are hashed as the
    zeros they read as, without reading them (a 1 GiB sparse file costs only the hashing)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return fd_sha256(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def fd_sha256(fd: int, size: int) -> str:
    """The same of an open file of `size` bytes."""
    h = hashlib.sha256()
    pos = 0
    while pos < size:
        data_at, hole_at = _next_extent(fd, pos, size)
        _hash_zeros(h, data_at - pos)
        pos = data_at
        while pos < hole_at:
            chunk = os.pread(fd, min(hole_at - pos, _HASH_CHUNK), pos)
            if not chunk:  # shrank while read: the sha256 will differ, as it should
                return h.hexdigest()
            h.update(chunk)
            pos += len(chunk)
    return h.hexdigest()


def _next_extent(fd: int, pos: int, size: int) -> tuple[int, int]:
    """(start of the next data, start of the hole after it) from `pos`; no holes where the
    filesystem cannot tell (all data)."""
    try:
        data_at = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only a hole up to the end
            return size, size
        return pos, size
    try:
        return data_at, min(os.lseek(fd, data_at, os.SEEK_HOLE), size)
    except OSError:
        return data_at, size


_ZEROS = memoryview(bytes(_HASH_CHUNK))


def _hash_zeros(h: hashlib._Hash, n: int) -> None:
    while n > 0:
        step = min(n, _HASH_CHUNK)
        h.update(_ZEROS[:step])
        n -= step


def check_archive_file(set_dir: Path, archive: ArchiveRecord) -> None:
    """Compare an archive file with its manifest sha256 (one streaming read)."""
    path = Path(set_dir) / archive.file
    if file_sha256(path) != archive.sha256:
        raise RestoreSetError(
            f"archive {archive.file} ({archive.name}) is corrupted: sha256 differs from the manifest",
            "the medium or the copy is damaged; use another copy of the restore set",
        )


def check_extra(set_dir: Path, record: ExtraRecord) -> None:
    """Compare one of the set's extra files with its manifest size and sha256."""
    path = Path(set_dir) / record.file
    try:
        size = path.stat().st_size
        digest = file_sha256(path)
    except OSError as exc:
        raise RestoreSetError(f"cannot read {path}: {exc.strerror}", "check the medium") from exc
    if size != record.size or digest != record.sha256:
        raise RestoreSetError(
            f"{record.file} of restore set {set_dir} is corrupted: "
            + ("its size" if size != record.size else "its sha256")
            + " differs from the manifest",
            "the medium or the copy is damaged; use another copy of the restore set",
        )


def set_layout(set_dir: Path, manifest: Manifest) -> dict[str, Any]:
    """The set's layout.json, its sha256 checked, its shape validated, and each filesystem's
    `archive` (the archive holding its files, or null) naming an archive of the manifest."""
    check_extra(set_dir, manifest.extra(LAYOUT_NAME))
    path = Path(set_dir) / LAYOUT_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RestoreSetError(f"cannot read {path}: {exc}", "check the medium") from exc
    layout = load_layout(text)
    names = {a.name for a in manifest.archives}
    for i, fs in enumerate(layout["filesystems"]):
        if "archive" not in fs:
            raise RestoreSetError(
                f"{LAYOUT_NAME}: filesystems[{i}] ({fs['device']}) has no archive key",
                "the layout was not written by a capture; capture the machine again",
            )
        if fs["archive"] is not None and fs["archive"] not in names:
            raise _invalid(
                f"{LAYOUT_NAME}: filesystem {fs['device']} names archive {fs['archive']!r}, "
                "which the manifest does not list"
            )
    return layout


def xattr_digest(items: Iterable[tuple[bytes, bytes]]) -> str:
    """sha256 over the xattrs sorted by name: for each, name, NUL, the value's length as
    8 bytes big-endian, the value. POSIX ACLs are the system.posix_acl_* xattrs."""
    h = hashlib.sha256()
    for name, value in sorted(items):
        h.update(name + b"\0" + len(value).to_bytes(8, "big") + value)
    return h.hexdigest()


# XFS lists its on-disk copy of the POSIX ACLs to root as these trusted xattrs; libarchive
# neither archives nor restores them (the ACLs travel as such), so the digest leaves them out.
XFS_ACL_XATTRS = frozenset({"trusted.SGI_ACL_FILE", "trusted.SGI_ACL_DEFAULT"})


def path_xattrs(path: str | bytes) -> Iterator[tuple[bytes, bytes]]:
    """A file's xattrs (not following symlinks), names and values as bytes; XFS's ACL copies
    (XFS_ACL_XATTRS) left out, so a tree digests the same on XFS and elsewhere."""
    for name in os.listxattr(path, follow_symlinks=False):
        if name in XFS_ACL_XATTRS:
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:  # vanished between list and get (e.g. a racing setfacl)
            continue
        yield os.fsencode(name), value


def _plain_name(file: str, where: str) -> str:
    if "/" in file or file in ("", ".", ".."):
        raise _invalid(f"{where}: file {file!r} is not a plain file name")
    return file


def _invalid(message: str) -> RestoreSetError:
    return RestoreSetError(message, "the manifest is damaged or not from initrd-composer; use another copy")


def _field(data: dict[str, Any], key: str, kind: type, where: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _invalid(f"{where}: field {key!r} must be {kind.__name__}")
    return value


def _rdev(value: Any, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
        raise _invalid(f"{where}: rdev must be [major, minor]")
    return (value[0], value[1])
