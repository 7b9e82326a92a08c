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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from initrd_composer.boot.restore_set.layout import LAYOUT_NAME, dump_layout
from initrd_composer.boot.restore_set.manifest import (
    ARCHIVE_SUFFIX,
    MANIFEST_NAME,
    ExtraRecord,
    Manifest,
    dumps,
)
from initrd_composer.capture.archive_children import ArchiveDone, ArchiveJob, write_archives
from initrd_composer.capture.archive_write import Progress
from initrd_composer.capture.durable import durable_file, fsync_dir
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
    parallel: int | None = None,
    progress: Progress | None = None,
    on_archive: Callable[[ArchiveDone], None] | None = None,
) -> Manifest:
    """Capture each tree into `set_dir` (created if needed); return the manifest.

    `layout` is written as layout.json; its filesystems' `archive` keys, where present, must
    name trees. `extra_files` (the collector's disk-NAME-gap.bin, ...) are copied in by name.
    The archives are written side by side, `parallel` at once (default: one per CPU; see
    archive_children). `progress` gets the bytes of file data read so far in this set (a few
    times a second); `on_archive` each archive once it is on disk, in the trees' order."""
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
        fsync_dir(set_dir)
    extras = [_write_durably(set_dir / LAYOUT_NAME, layout_text)]
    for source in extra_files:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise CaptureError(f"cannot read {source}: {exc.strerror}", "collect the layout again") from exc
        extras.append(_write_durably(set_dir / Path(source).name, data))
    jobs = [ArchiveJob(t.name, f, t.root, (*excludes, *t.excludes))
            for t, f in zip(items, files, strict=True)]  # fmt: skip
    archives = write_archives(
        set_dir, jobs, threads=threads, parallel=parallel, progress=progress, on_archive=on_archive
    )
    manifest = Manifest(tuple(archives), tuple(extras))
    _write_durably(set_dir / MANIFEST_NAME, dumps(manifest))
    return manifest


def _check_layout_archives(layout: dict[str, Any], names: set[str]) -> None:
    for fs in layout.get("filesystems") or []:
        name = fs.get("archive") if isinstance(fs, dict) else None
        if name is not None and name not in names:
            raise CaptureError(f"the layout's filesystem {fs.get('device')} names archive {name!r}, "
                               "which is not captured", f"trees: {', '.join(sorted(names)) or 'none'}")


def _write_durably(path: Path, data: bytes) -> ExtraRecord:
    with durable_file(path) as f:
        f.write(data)
    fsync_dir(path.parent)
    return ExtraRecord(path.name, hashlib.sha256(data).hexdigest(), len(data))
