"""Write an output all-or-nothing: a temp file (or directory) beside it, renamed over it on
success.

A half-written initrd that boots into a kernel panic is worse than none, so readers of
`path` only ever see the old file or the complete new one; the same holds for the PXE tree
and the OBDR tape-image directory (atomic_directory).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
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


@contextlib.contextmanager
def atomic_directory(path: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty directory (mode 0755) beside `path` that becomes `path` only if the
    block succeeds; on any exception it is removed and `path` is left as it was. OSErrors
    become ComposeError naming `path`, as in atomic_output.

    `path` may be absent or an empty directory. With `replace`, a full directory is renamed
    aside, the new one renamed into place, then the old one removed: readers see the old
    tree or the new one, never a mix (for a moment, neither). Callers check first that
    `path` is theirs to replace."""
    path = Path(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(0o755)  # mkdtemp makes 0700; a TFTP server reads as its own user
    except OSError as exc:
        raise _as_compose_error(path, exc) from exc
    try:
        yield tmp
        _rename_dir(tmp, path, replace)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _as_compose_error(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def _rename_dir(tmp: Path, path: Path, replace: bool) -> None:
    try:
        os.rename(tmp, path)  # onto nothing or an empty directory: one atomic step
        return
    except OSError as exc:
        if not replace or exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.rename(path, old / "tree")
    try:
        os.rename(tmp, path)
    except OSError:
        # Put the old tree back; if even that fails it stays whole under `old`, never removed.
        os.rename(old / "tree", path)
        old.rmdir()
        raise
    # The new tree is in place: failing to remove the old one only leaves a hidden directory.
    shutil.rmtree(old, ignore_errors=True)
