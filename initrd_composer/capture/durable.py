"""A file of the set written so that it is either whole on disk under its name or absent."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from initrd_composer.capture.errors import CaptureError


def part_path(path: Path) -> Path:
    """Where `path` is written before it is complete (readers ignore dot names)."""
    return path.with_name(f".{path.name}.part")


@contextlib.contextmanager
def durable_file(path: Path) -> Iterator[BinaryIO]:
    """An open file for `path`: written under part_path(path), fsynced and renamed when the
    block ends; removed if it fails (an OSError becomes a CaptureError naming `path`)."""
    part = part_path(path)
    try:
        with open(part, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        raise CaptureError(f"cannot write {path}: {exc.strerror}", "check the set directory") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
