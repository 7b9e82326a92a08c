"""Write a restore set: layout.json and the raw boot-code files, one archive per (name, root)
tree, the manifest last.

A previous manifest is removed first, so an interrupted re-capture never looks complete.
Then `layout.json` and the extra files are written (temp file, fsync, rename), each archive
to a temporary name, fsynced and renamed; only when all are on disk is `manifest.json`
written (temp file, fsync, rename, directory fsync). A set directory with a manifest is
therefore complete; one without is refused on restore.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from initrd_composer.boot.restore_set.layout import LAYOUT_NAME, dump_layout
from initrd_composer.boot.restore_set.manifest import (
    ARCHIVE_SUFFIX,
    MANIFEST_NAME,
    ArchiveRecord,
    ExtraRecord,
    Manifest,
    dumps,
)
from initrd_composer.capture.archive_write import Progress, write_archive
from initrd_composer.capture.errors import CaptureError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class SetTree:
    """One tree to archive: its archive name, its root and its own exclude patterns (relative
    to that root, see archive_write.Excluder), on top of write_set's `excludes`."""

    name: str
    root: Path
    excludes: tuple[str, ...] = ()


def archive_file_name(name: str) -> str:
    """`root` -> `root.pax.zst`; names are those of the layout's filesystems."""
    if not _NAME.fullmatch(name):
        raise CaptureError(f"bad archive name {name!r}", "use letters, digits, '.', '_' and '-'")
    return name + ARCHIVE_SUFFIX


def write_set(
    set_dir: Path,
    trees: Sequence[SetTree | tuple[str, Path]],
    *,
    layout: dict[str, Any],
    extra_files: Sequence[Path] = (),
    excludes: Sequence[str] = (),
    threads: int | None = None,
    progress: Progress | None = None,
    on_archive: Callable[[ArchiveRecord], None] | None = None,
) -> Manifest:
    """Capture each tree into `set_dir` (created if needed); return the manifest.

    `layout` is written as layout.json; its filesystems' `archive` keys, where present, must
    name trees. `extra_files` (the collector's disk-NAME-gap.bin, ...) are copied in by name.
    `progress` gets the bytes of file data read so far in this set (every MiB or so);
    `on_archive` each archive's record once it is on disk."""
    set_dir = Path(set_dir)
    items = [t if isinstance(t, SetTree) else SetTree(t[0], Path(t[1])) for t in trees]
    names = [t.name for t in items]
    if len(set(names)) != len(names):
        raise CaptureError("two trees have the same archive name", f"names: {', '.join(names)}")
    files = [archive_file_name(name) for name in names]
    _check_layout_archives(layout, set(names))
    layout_text = dump_layout(layout).encode("utf-8")
    extra_names = [LAYOUT_NAME] + [Path(f).name for f in extra_files]
    if set(extra_names) & {MANIFEST_NAME, *files} or len(set(extra_names)) != len(extra_names):
        raise CaptureError("two files of the set have the same name", f"files: {', '.join(extra_names)}")
    try:
        set_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaptureError(f"cannot create {set_dir}: {exc.strerror}", "choose another directory") from exc
    with contextlib.suppress(FileNotFoundError):
        (set_dir / MANIFEST_NAME).unlink()
        _fsync_dir(set_dir)
    extras = [_write_durably(set_dir / LAYOUT_NAME, layout_text)]
    for source in extra_files:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise CaptureError(f"cannot read {source}: {exc.strerror}", "collect the layout again") from exc
        extras.append(_write_durably(set_dir / Path(source).name, data))
    archives = []
    base = 0
    for tree in items:
        report = None if progress is None else _offset(progress, base)
        record, data_bytes = _write_one(set_dir, tree, [*excludes, *tree.excludes], threads, report)
        base += data_bytes
        archives.append(record)
        if on_archive is not None:
            on_archive(record)
    manifest = Manifest(tuple(archives), tuple(extras))
    _write_durably(set_dir / MANIFEST_NAME, dumps(manifest))
    return manifest


def _offset(progress: Progress, base: int) -> Progress:
    return lambda done: progress(base + done)


def _check_layout_archives(layout: dict[str, Any], names: set[str]) -> None:
    for fs in layout.get("filesystems") or []:
        name = fs.get("archive") if isinstance(fs, dict) else None
        if name is not None and name not in names:
            raise CaptureError(f"the layout's filesystem {fs.get('device')} names archive {name!r}, "
                               "which is not captured", f"trees: {', '.join(sorted(names)) or 'none'}")


def _write_one(
    set_dir: Path, tree: SetTree, excludes: Sequence[str], threads: int | None, progress: Progress | None
) -> tuple[ArchiveRecord, int]:
    file = archive_file_name(tree.name)
    final = set_dir / file
    part = set_dir / f".{file}.part"
    try:
        with open(part, "wb") as out:
            written = write_archive(tree.root, out, excludes=excludes, threads=threads, progress=progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        raise CaptureError(f"cannot write {final}: {exc.strerror}", "check the set directory") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    record = ArchiveRecord(tree.name, file, written.sha256, written.size, written.files)
    return record, written.data_bytes


def _write_durably(path: Path, data: bytes) -> ExtraRecord:
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
        raise CaptureError(f"cannot write {path}: {exc.strerror}", "check the set directory") from exc
    _fsync_dir(path.parent)
    return ExtraRecord(path.name, hashlib.sha256(data).hexdigest(), len(data))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
