"""Write image entries into a directory tree: for tests, chroot checks and inspection.

The real image writer streams a cpio; this is the same content as plain files, so a
`chroot DEST ...` can prove the runtime works before anything boots.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from initrd_composer.errors import ComposeError
from initrd_composer.image.entries import Entry


def materialize(entries: Iterable[Entry], dest: Path) -> list[Entry]:
    """Create every entry under dest (which may exist); returns the entries skipped.

    Device nodes need root and are skipped (and returned) otherwise. Parent directories
    missing from `entries` are created 0755. Nothing is ever written outside dest: a path
    whose parent resolves outside it (through a symlink entry) raises ComposeError.
    """
    dest.mkdir(parents=True, exist_ok=True)
    top = dest.resolve()
    skipped: list[Entry] = []
    dir_modes: list[tuple[Path, int]] = []  # applied last, so read-only dirs can be filled
    ordered = sorted(entries, key=lambda e: (e.kind != "dir", e.path))
    for entry in ordered:
        target = top / entry.path
        parent = target.parent.resolve()
        if parent != top and top not in parent.parents:
            raise ComposeError(f"{entry.path}: parent directory resolves outside {dest}")
        parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "dir":
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                raise ComposeError(f"{entry.path}: exists and is not a directory under {dest}")
            target.mkdir(exist_ok=True)
            dir_modes.append((target, entry.mode))
            continue
        _remove(target)
        if entry.kind == "symlink":
            os.symlink(entry.target, target)
        elif entry.kind == "file":
            if entry.data is not None:
                target.write_bytes(entry.data)
            elif entry.source is not None:
                shutil.copyfile(entry.source, target)
            os.chmod(target, entry.mode)
        elif os.geteuid() == 0:
            kind = 0o020000 if entry.kind == "chardev" else 0o060000
            os.mknod(target, kind | entry.mode, os.makedev(*entry.rdev))
        else:
            skipped.append(entry)
    for directory, mode in reversed(dir_modes):
        os.chmod(directory, mode)
    return skipped


def _remove(target: Path) -> None:
    if target.is_symlink() or not target.exists():
        target.unlink(missing_ok=True)
    elif target.is_dir():
        raise ComposeError(f"{target}: a directory stands where a non-directory goes")
    else:
        target.unlink()
