"""Read an initrd the way the kernel unpacks it: concatenated segments, each either an
uncompressed newc cpio or a compressed stream holding cpio archives, zero padding between.

The segments are split here by walking newc headers, because only the header walk knows
where an uncompressed archive ends (after TRAILER!!! and its padding); libarchive reads
ahead in blocks and cannot say. Tests cross-check the members against libarchive, GNU cpio
and Debian's lsinitramfs.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from initrd_composer.errors import ComposeError
from initrd_composer.image.compression import decompress_prefix, detect_compression

_HEADER_LEN = 110
_TRAILER = "TRAILER!!!"
_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}
_HINT = "the image is damaged or not an initrd; rebuild it"
_NON_ZERO = re.compile(rb"[^\0]")


def _skip_zeros(buf: bytes, pos: int) -> int:
    """The offset of the next non-zero byte at or after `pos` (len(buf) if none)."""
    match = _NON_ZERO.search(buf, pos)
    return match.start() if match else len(buf)


@dataclass(frozen=True)
class Segment:
    """One concatenated piece of the image file."""

    index: int
    offset: int  # where it starts in the image file
    length: int  # its bytes in the image file
    compression: str  # 'none' for an uncompressed cpio


@dataclass(frozen=True)
class Member:
    """One cpio member as stored (path exactly as in the archive)."""

    path: str
    kind: str  # file dir symlink chardev blockdev fifo socket
    mode: int  # permission bits only
    size: int
    target: str  # symlink target, else ""
    rdev: tuple[int, int]
    mtime: int
    ino: int
    nlink: int
    uid: int
    gid: int
    segment: int
    data_offset: int = field(default=0, repr=False, compare=False)


def _normalise(path: str) -> str:
    while path.startswith("./"):
        path = path[2:]
    return path.strip("/") or "."


class InitrdImage:
    """A parsed image: its segments, its members in archive order, and their bytes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.segments: list[Segment] = []
        self.members: list[Member] = []
        self._streams: list[bytes] = []  # per segment: the bytes its offsets refer to

    def paths(self) -> list[str]:
        """Member paths in archive order, early segments first, as lsinitramfs lists them."""
        return [m.path for m in self.members]

    def member(self, path: str) -> Member:
        """The member the kernel would leave at `path` (a later duplicate replaces an
        earlier one); ComposeError when absent."""
        wanted = _normalise(path)
        for member in reversed(self.members):
            if _normalise(member.path) == wanted:
                return member
        raise ComposeError(f"{self.name}: no {wanted} in the image")

    def read(self, path: str) -> bytes:
        """The content of the regular file at `path`."""
        member = self.member(path)
        if member.kind != "file":
            raise ComposeError(f"{self.name}: {member.path} is a {member.kind}, not a file")
        if member.size == 0 and member.nlink > 1:
            # newc hardlinks carry the data on the last link only.
            for other in self.members:
                if (other.segment, other.ino) == (member.segment, member.ino) and other.size:
                    member = other
        stream = self._streams[member.segment]
        return stream[member.data_offset : member.data_offset + member.size]

    # -- parsing ------------------------------------------------------------------------

    def _parse_archive(self, buf: bytes, pos: int, segment: int, where: str) -> int:
        """Walk one newc archive starting at `pos`; return the offset after its trailer."""
        while True:
            if pos + _HEADER_LEN > len(buf):
                raise ComposeError(f"{where}: truncated cpio header at offset {pos}", _HINT)
            header = buf[pos : pos + _HEADER_LEN]
            if header[:6] not in (b"070701", b"070702"):
                raise ComposeError(f"{where}: bad cpio magic at offset {pos}", _HINT)
            try:
                fields = [int(header[i : i + 8], 16) for i in range(6, _HEADER_LEN, 8)]
            except ValueError:
                raise ComposeError(f"{where}: bad cpio header at offset {pos}", _HINT) from None
            ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, _ = fields
            name_end = pos + _HEADER_LEN + namesize
            data_start = (name_end + 3) & ~3
            data_end = data_start + size
            if namesize == 0 or data_end > len(buf):
                raise ComposeError(f"{where}: truncated cpio member at offset {pos}", _HINT)
            name = buf[pos + _HEADER_LEN : name_end - 1].decode("utf-8", "surrogateescape")
            pos = (data_end + 3) & ~3
            if name == _TRAILER:
                return min(pos, len(buf))
            kind = _KINDS.get(stat.S_IFMT(mode))
            if kind is None:
                raise ComposeError(f"{where}: {name}: unknown file type {mode:o}", _HINT)
            target = ""
            if kind == "symlink":
                target = buf[data_start:data_end].decode("utf-8", "surrogateescape")
            self.members.append(
                Member(
                    path=name,
                    kind=kind,
                    mode=stat.S_IMODE(mode),
                    size=size,
                    target=target,
                    rdev=(rmaj, rmin),
                    mtime=mtime,
                    ino=ino,
                    nlink=nlink,
                    uid=uid,
                    gid=gid,
                    segment=segment,
                    data_offset=data_start,
                )
            )

    def _parse_stream(self, buf: bytes, segment: int, where: str) -> None:
        """Archives separated by zero padding, filling a decompressed stream."""
        pos = _skip_zeros(buf, 0)
        while pos < len(buf):
            if pos & 3:
                raise ComposeError(f"{where}: broken padding at offset {pos}", _HINT)
            pos = _skip_zeros(buf, self._parse_archive(buf, pos, segment, where))

    def _add_segment(self, offset: int, length: int, compression: str, stream: bytes) -> int:
        index = len(self.segments)
        self.segments.append(Segment(index, offset, length, compression))
        self._streams.append(stream)
        return index


def parse_image(data: bytes, name: str = "<image>") -> InitrdImage:
    """Split `data` into segments and parse every member; ComposeError naming `name`
    for anything the kernel would reject (or could not unpack completely)."""
    image = InitrdImage(name)
    if not data:
        raise ComposeError(f"{name}: empty file, not an initrd", _HINT)
    pos = _skip_zeros(data, 0)
    while pos < len(data):
        start = pos
        kind = detect_compression(data[pos : pos + 6])
        if kind == "none" and not pos & 3:
            index = image._add_segment(start, 0, "none", data)
            pos = image._parse_archive(data, pos, index, f"{name}: segment {index}")
            image.segments[index] = Segment(index, start, pos - start, "none")
            pos = _skip_zeros(data, pos)
            continue
        if kind is None or kind == "none":
            raise ComposeError(f"{name}: unrecognised data at offset {pos}", _HINT)
        where = f"{name}: segment {len(image.segments)} ({kind})"
        output, used = decompress_prefix(memoryview(data)[pos:], where)
        index = image._add_segment(start, used, kind, output)
        image._parse_stream(output, index, where)
        pos = _skip_zeros(data, pos + used)
    return image


def open_image(image: Path) -> InitrdImage:
    """Read and parse the initrd file `image`."""
    try:
        data = image.read_bytes()
    except OSError as exc:
        raise ComposeError(f"cannot read {image}: {exc.strerror}", "check the path of the image") from exc
    return parse_image(data, str(image))


def list_paths(image: Path) -> list[str]:
    """The paths `lsinitramfs IMAGE` prints, in the same order."""
    return open_image(image).paths()


def read_member(image: Path, path: str) -> bytes:
    """The bytes of the file at `path` inside the initrd `image`."""
    return open_image(image).read(path)
