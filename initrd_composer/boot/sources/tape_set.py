"""A restore set in an OBDR tape's data file (tape file 2): the pax tar `compose-initrd obdr
--data SET` wrote, read with the standard library's tarfile in stream mode, straight from
the drive: nothing is staged on a disk or held whole in RAM.

The media stage reads the data file once anyway (tape_source checks its bytes against the
label); on that pass `index_members` lists the tar's files at its top and one level down,
where a set can be (the data's root, or `restore_set=NAME`), so `missing()` needs no second
pass. The writer puts each directory's files smallest first (media.data_archive): the
manifest, the layout and the boot-area files lie before the archives, and the archives
smallest first.

A tape is one drive read front to back. `position()` tells extract_all the archives' order on
the tape, and it extracts them one after the other in one process. A file behind the
current position costs a rewind and a pass from the start: correct, only slower. The drive
is open only while it is read (st lets one process open it at a time): `read()` closes it
again, and `release()` closes what `open()` left open, before another process needs it.
"""

from __future__ import annotations

import errno
import io
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.layout import LAYOUT_NAME
from initrd_composer.boot.restore_set.manifest import MANIFEST_NAME
from initrd_composer.boot.tape import DeviceTape, Tape, TapeError, open_tape_file

DATA_FILE = 2  # header, ISO, data
INDEX_DEPTH = 2  # "manifest.json", "NAME/manifest.json"
INDEX_MAX = 4096  # files listed at those depths; a set has a handful
SMALL_FILE_MAX = 256 << 20  # read(): the manifest of a machine with millions of files
CACHE_MAX = 4 << 20  # files passed on the way to another are kept up to this size


@dataclass(frozen=True)
class TapeIndex:
    """The data file's files near its top, in tape order: (name, size)."""

    files: tuple[tuple[str, int], ...]
    complete: bool  # False: more than INDEX_MAX files there, or the tar ended in an error
    error: str | None = None  # the data file is no tar archive (or a damaged one)

    def as_json(self) -> dict[str, Any]:
        return {"files": [list(f) for f in self.files], "complete": self.complete, "error": self.error}

    @classmethod
    def from_json(cls, data: Any) -> TapeIndex:
        if not isinstance(data, dict):
            return cls((), False, "the media stage listed no files of the tape's data")
        files = tuple((str(name), int(size)) for name, size in data.get("files") or ())
        return cls(files, bool(data.get("complete")), data.get("error"))


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def index_members(stream: IO[bytes]) -> TapeIndex:
    """The files of the tar in `stream`, read front to back (the caller reads what follows
    the tar's end, the padding to whole blocks)."""
    files: list[tuple[str, int]] = []
    complete = True
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            while (info := tar.next()) is not None:
                name = _clean(info.name)
                if not info.isfile() or not name or name.count("/") >= INDEX_DEPTH:
                    continue
                if len(files) < INDEX_MAX:
                    files.append((name, info.size))
                else:
                    complete = False
    except tarfile.TarError as exc:
        return TapeIndex(tuple(files), False, f"not a readable tar archive ({exc})")
    return TapeIndex(tuple(files), complete)


def set_prefix(names: Iterable[str], subdir: str | None, where: str) -> str:
    """Where the set lies in the data: "" (its top) or "NAME/", as stage.locate_set decides
    for a mounted medium."""
    if subdir:
        return subdir.strip("/") + "/"
    names = set(names)
    if MANIFEST_NAME in names or LAYOUT_NAME in names:
        return ""
    candidates = sorted({n.split("/", 1)[0] for n in names
                         if "/" in n and n.split("/", 1)[1] in (MANIFEST_NAME, LAYOUT_NAME)})  # fmt: skip
    if len(candidates) == 1:
        return candidates[0] + "/"
    if not candidates:
        raise RestoreSetError(
            f"no restore set on {where}: no {MANIFEST_NAME} at the top of the tape's data or one level below",
            "write the set to the tape with `compose-initrd obdr --data SETDIR -o /dev/nstN`",
        )
    raise RestoreSetError(
        f"several restore sets on {where}: {', '.join(candidates)}",
        "choose one with restore_set=NAME on the kernel command line",
    )


class _Cursor:
    """The drive, open and positioned in the data file's tar."""

    def __init__(self, tape: Tape) -> None:
        self.tape = tape
        self.stream: BinaryIO = open_tape_file(tape, DATA_FILE)
        self.tar = tarfile.open(fileobj=self.stream, mode="r|")
        self.passed: set[str] = set()

    def close(self) -> None:
        self.tar.close()
        self.tape.close()


@dataclass
class TapeSet:
    """The set under `prefix` in the data file of the tape in `device` (/dev/nstN)."""

    device: str
    prefix: str
    index: TapeIndex
    open_tape: Callable[[], Tape] | None = None  # default: the st device
    _cache: dict[str, bytes] = field(default_factory=dict, repr=False)
    _cursor: _Cursor | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        return f"{self.device} file {DATA_FILE}" + (f" ({self.prefix.rstrip('/')})" if self.prefix else "")

    def _in_set(self, member: str) -> str | None:
        """The set's name for a file of the data ("NAME/manifest.json" -> "manifest.json"),
        None for one outside the set."""
        if not member.startswith(self.prefix) or "/" in member[len(self.prefix):]:
            return None
        return member[len(self.prefix):]

    def _sizes(self) -> dict[str, int]:
        return {name: size for member, size in self.index.files if (name := self._in_set(member)) is not None}

    def _keep(self, info: tarfile.TarInfo, name: str | None) -> bool:
        """Keep the file the tar is at when it is one of the set's small files; False (nothing
        read) when it is not."""
        if name is None or not info.isfile() or info.size > CACHE_MAX or self._cursor is None:
            return False
        handle = self._cursor.tar.extractfile(info)
        if handle is not None:
            self._cache[name] = handle.read()
        return True

    def _size(self, name: str) -> int:
        size = self._sizes().get(name)
        if size is None:
            raise FileNotFoundError(errno.ENOENT, f"{self.shown}: no {name} on the tape", name)
        return size

    def read(self, name: str) -> bytes:
        if name in self._cache:
            return self._cache[name]
        if self._size(name) > SMALL_FILE_MAX:
            raise OSError(errno.EFBIG, f"{self.shown}: {name} is larger than {SMALL_FILE_MAX >> 20} MiB")
        try:
            data = self._cache[name] = self._member(name).read()
        except TapeError as exc:
            self.release()
            raise OSError(exc.errno or errno.EIO, exc.message) from exc
        except tarfile.TarError as exc:
            self.release()
            raise OSError(errno.EIO, f"{self.shown}: the tape's tar is damaged in {name} ({exc})") from exc
        try:
            self._read_ahead()
        except (TapeError, tarfile.TarError):
            pass  # nothing is lost: a file not kept is read when it is asked for
        finally:
            self.release()
        return data

    def _read_ahead(self) -> None:
        """Keep the small files right after the one read (the layout after the manifest),
        up to the first larger one, whose header is all that is read of it."""
        assert self._cursor is not None
        while (info := self._cursor.tar.next()) is not None:
            member = _clean(info.name)
            self._cursor.passed.add(member)
            if not self._keep(info, self._in_set(member)):
                return

    def missing(self, names: list[str]) -> list[str]:
        sizes = self._sizes()
        return [name for name in names if name not in sizes]

    def open(self, name: str) -> io.BufferedReader:
        self._size(name)
        try:
            return self._member(name)
        except TapeError as exc:
            self.release()
            raise OSError(exc.errno or errno.EIO, exc.message) from exc

    def position(self, name: str) -> int:
        """Where `name` lies on the tape (its place among the listed files)."""
        full = self.prefix + name
        return next((i for i, (n, _) in enumerate(self.index.files) if n == full), len(self.index.files))

    def release(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            try:
                cursor.close()
            except TapeError:
                pass  # closing a drive opened read-only writes nothing that could be lost

    def _member(self, name: str) -> io.BufferedReader:
        """The file as a stream, the drive spaced forward to it (rewound first when it lies
        behind the position, or the drive is not open yet)."""
        full = self.prefix + name
        if self._cursor is None or full in self._cursor.passed:
            self.release()
            self._cursor = _Cursor(self.open_tape() if self.open_tape else DeviceTape(self.device))
        cursor = self._cursor
        try:
            while (info := cursor.tar.next()) is not None:
                member = _clean(info.name)
                cursor.passed.add(member)
                if member == full:
                    stream = cursor.tar.extractfile(info)
                    if not isinstance(stream, io.BufferedReader):  # tarfile's ExFileObject is one
                        break
                    return stream
                name_in_set = self._in_set(member)
                if name_in_set not in self._cache:
                    self._keep(info, name_in_set)
        except tarfile.TarError as exc:
            self.release()
            why = f"{self.shown}: the tape's tar is damaged before {name} ({exc})"
            raise OSError(errno.EIO, why) from exc
        self.release()
        raise OSError(errno.EIO, f"{self.shown}: {name} is listed but was not found on a second read")


def tape_set(device: str, index_json: Any, subdir: str | None) -> TapeSet:
    """The set on the tape the media stage found (its index from the report's tape data)."""
    index = TapeIndex.from_json(index_json)
    if index.error and not index.files:
        raise RestoreSetError(f"{device} file {DATA_FILE}: {index.error}",
                              "write the set to the tape with `compose-initrd obdr --data SETDIR`")
    prefix = set_prefix((name for name, _ in index.files), subdir, f"{device} file {DATA_FILE}")
    return TapeSet(device, prefix, index)


def note_of(location: TapeSet) -> dict[str, Any]:
    """What the shell's `restore` steps and `nuke` need to read the same set again."""
    return {"tape": location.device, "prefix": location.prefix, "index": location.index.as_json()}


def from_note(note: Mapping[str, Any]) -> TapeSet:
    return TapeSet(str(note["tape"]), str(note.get("prefix") or ""), TapeIndex.from_json(note.get("index")))
