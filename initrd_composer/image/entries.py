"""What goes into an image: a flat list of entries, independent of how it is written."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

EntryKind = Literal["file", "dir", "symlink", "chardev", "blockdev"]


@dataclass(frozen=True)
class Entry:
    """One archive member. `path` is relative to the image root, without a leading slash.

    A file takes its bytes from `data` when given, else from the host file `source`
    (read at write time, so planning stays cheap). `origin` says why it is in, for `explain`.
    """

    path: str
    kind: EntryKind
    mode: int = 0o644
    source: Path | None = None
    data: bytes | None = None
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    origin: str = ""

    def __post_init__(self) -> None:
        if self.path.startswith("/") or self.path in ("", ".") or ".." in self.path.split("/"):
            raise ValueError(f"bad image path {self.path!r}")
        if self.kind == "file" and self.source is None and self.data is None:
            raise ValueError(f"file entry {self.path!r} has neither source nor data")

    @property
    def type_bits(self) -> int:
        return {
            "file": stat.S_IFREG,
            "dir": stat.S_IFDIR,
            "symlink": stat.S_IFLNK,
            "chardev": stat.S_IFCHR,
            "blockdev": stat.S_IFBLK,
        }[self.kind]


def file_entry(path: str, source: Path, mode: int | None = None, origin: str = "") -> Entry:
    """A host file copied in; its mode defaults to the host file's permission bits."""
    if mode is None:
        mode = stat.S_IMODE(source.stat().st_mode)
    return Entry(path=path.lstrip("/"), kind="file", mode=mode, source=source, origin=origin)


def data_entry(path: str, data: bytes, mode: int = 0o644, origin: str = "") -> Entry:
    return Entry(path=path.lstrip("/"), kind="file", mode=mode, data=data, origin=origin)


def symlink_entry(path: str, target: str, origin: str = "") -> Entry:
    return Entry(path=path.lstrip("/"), kind="symlink", mode=0o777, target=target, origin=origin)


def dir_entry(path: str, mode: int = 0o755) -> Entry:
    return Entry(path=path.lstrip("/"), kind="dir", mode=mode)


def chardev_entry(path: str, major: int, minor: int, mode: int = 0o600) -> Entry:
    return Entry(path=path.lstrip("/"), kind="chardev", mode=mode, rdev=(major, minor))
