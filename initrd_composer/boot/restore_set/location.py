"""Where a restore set is read from, so that nuke and compare read every source one way.

A set is its two small JSON files, read whole, and its archives, each read once, front to
back, as a stream: a directory (an NFS export, a CD, a USB disk: `SetDirectory`) offers that,
and so does an HTTP server (`sources.http_set.SetUrl`) without ever holding an archive in RAM.
A tape (`sources.tape_set.TapeSet`) offers it too, one file at a time, in the order the files
lie on it: a `SequentialLocation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


class Stream(Protocol):
    """An archive being read: a file, or sources.http's HttpStream."""

    def readinto(self, buf: bytearray | memoryview, /) -> int | None: ...
    def close(self) -> None: ...


class SetLocation(Protocol):
    """The restore set's files by name (`manifest.json`, `root.pax.zst`)."""

    @property
    def shown(self) -> str:
        """For messages and reports: a path, or a URL without its password."""
        ...

    def read(self, name: str) -> bytes:
        """A small file whole; FileNotFoundError when the set has no such file, OSError else."""
        ...

    def missing(self, names: list[str]) -> list[str]:
        """Those of `names` the set does not hold."""
        ...

    def open(self, name: str) -> Stream:
        """A file as a stream read once; OSError when it cannot be (a stream that fails later
        raises from readinto)."""
        ...


@runtime_checkable
class SequentialLocation(SetLocation, Protocol):
    """A set one reader reads front to back (a tape drive): its archives are extracted one
    after the other, in `position` order, and `release` frees the drive for another process."""

    def position(self, name: str) -> int: ...
    def release(self) -> None: ...


@dataclass(frozen=True)
class SetDirectory:
    """A set directory on a mounted filesystem."""

    path: Path

    @property
    def shown(self) -> str:
        return str(self.path)

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def missing(self, names: list[str]) -> list[str]:
        return [name for name in names if not (self.path / name).is_file()]

    def open(self, name: str) -> Stream:
        return open(self.path / name, "rb")

    def __str__(self) -> str:
        return self.shown


def location_of(where: Path | SetLocation) -> SetLocation:
    return SetDirectory(where) if isinstance(where, Path) else where
