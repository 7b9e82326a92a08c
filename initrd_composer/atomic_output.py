"""Write an output file all-or-nothing: a temp file beside it, renamed over it on success.

A half-written initrd that boots into a kernel panic is worse than none, so readers of
`path` only ever see the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from initrd_composer.errors import ComposeError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _as_compose_error(path: Path, exc: OSError) -> ComposeError:
    if exc.errno in _NO_SPACE:
        return ComposeError(
            f"no space left on device writing {path}",
            f"free space on the filesystem of {path.parent} or choose another -o",
        )
    if exc.errno == errno.ENOENT and not path.parent.is_dir():
        return ComposeError(
            f"cannot write {path}: directory {path.parent} does not exist",
            "create it first or choose another -o",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ComposeError(
            f"cannot write {path}: {exc.strerror}",
            "choose a writable directory with -o, or run with enough privileges",
        )
    return ComposeError(f"cannot write {path}: {exc.strerror}", "choose another -o")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; some filesystems refuse fsync on a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_output_dir(path: Path) -> None:
    """Fail before a long build, not after it, when `path` cannot be written:
    create and remove a scratch file beside it (the rename target's filesystem)."""
    path = Path(path)
    try:
        fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=path.parent or ".")
    except OSError as exc:
        raise _as_compose_error(path, exc) from None
    os.close(fd)
    os.unlink(scratch)


@contextlib.contextmanager
def atomic_output(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `path` (with `mode`) only if the block succeeds.

    On any exception the temp file is removed and an existing `path` is left untouched.
    OSErrors, whether from opening, from the caller's writes or from finishing, become
    ComposeError naming `path` (ENOSPC: "no space left on device writing PATH").
    """
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _as_compose_error(path, exc) from exc
    tmp = Path(tmp_name)
    with _replaced_on_success(tmp, path):
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())


@contextlib.contextmanager
def _replaced_on_success(tmp: Path, path: Path) -> Iterator[None]:
    """Rename `tmp` over `path` when the block succeeds; remove it when it fails, with
    OSErrors as ComposeError naming `path`."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise _as_compose_error(path, exc) from exc
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """Like atomic_output, for a tool that writes the file itself (xorriso): yield the
    path of an empty temp file beside `path`; it becomes `path` only if the block succeeds."""
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _as_compose_error(path, exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    with _replaced_on_success(tmp, path):
        tmp.unlink()  # the tool creates it; some (xorriso) refuse to overwrite a file
        yield tmp
        with open(tmp, "rb") as done:
            os.fsync(done.fileno())
        os.chmod(tmp, mode)
