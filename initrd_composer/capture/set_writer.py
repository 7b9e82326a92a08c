"""Write a restore set: one archive per (name, root) tree into a directory, the manifest last.

Each archive is written to a temporary name, fsynced and renamed; only when all are on
disk is `manifest.json` written (temp file, fsync, rename, directory fsync). A set
directory with a manifest is therefore complete; one without is refused on restore. A
previous manifest is removed first, so an interrupted re-capture never looks complete.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from initrd_composer.boot.restore_set.manifest import (
    ARCHIVE_SUFFIX,
    MANIFEST_NAME,
    ArchiveRecord,
    Manifest,
    dumps,
)
from initrd_composer.capture.archive_write import write_archive
from initrd_composer.errors import ComposeError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def archive_file_name(name: str) -> str:
    """`root` -> `root.pax.zst`; names are those of the layout's filesystems."""
    if not _NAME.fullmatch(name):
        raise ComposeError(f"bad archive name {name!r}", "use letters, digits, '.', '_' and '-'")
    return name + ARCHIVE_SUFFIX


def write_set(
    set_dir: Path, trees: Sequence[tuple[str, Path]], *, excludes: Sequence[str] = (),
    threads: int | None = None,
) -> Manifest:
    """Capture each (name, root) tree into `set_dir` (created if needed); return the manifest."""
    set_dir = Path(set_dir)
    names = [name for name, _root in trees]
    if len(set(names)) != len(names):
        raise ComposeError("two trees have the same archive name", f"names: {', '.join(names)}")
    set_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (set_dir / MANIFEST_NAME).unlink()
        _fsync_dir(set_dir)
    archives = [_write_one(set_dir, name, Path(root), excludes, threads) for name, root in trees]
    manifest = Manifest(tuple(archives))
    _write_durably(set_dir / MANIFEST_NAME, dumps(manifest))
    return manifest


def _write_one(
    set_dir: Path, name: str, root: Path, excludes: Sequence[str], threads: int | None
) -> ArchiveRecord:
    file = archive_file_name(name)
    final = set_dir / file
    part = set_dir / f".{file}.part"
    try:
        with open(part, "wb") as out:
            written = write_archive(root, out, excludes=excludes, threads=threads)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        raise ComposeError(f"cannot write {final}: {exc.strerror}", "check the set directory") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    return ArchiveRecord(name, file, written.sha256, written.size, written.files)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ComposeError(f"cannot write {path}: {exc.strerror}", "check the set directory") from exc
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
