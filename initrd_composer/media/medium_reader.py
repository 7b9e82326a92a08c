"""Find the initrd inside a medium, so `ls` and `check` work on an ISO or an OBDR image as
on the initrd itself: an ISO 9660 file (read with libarchive), an OBDR tape or
tape-image directory (its second tape file is the ISO), or else the file as an initrd."""

from __future__ import annotations

from pathlib import Path

import libarchive
from libarchive.exception import ArchiveError

from initrd_composer.errors import ComposeError
from initrd_composer.image.reader import InitrdImage, open_image, parse_image

ISO_INITRD = "boot/initrd.img"
_ISO_MAGIC_AT = 0x8001  # "CD001" in the primary volume descriptor (sector 16)


def is_iso(head: bytes) -> bool:
    return head[_ISO_MAGIC_AT : _ISO_MAGIC_AT + 5] == b"CD001"


def iso_member(iso: Path | bytes, member: str, name: str) -> bytes:
    """The bytes of `member` on an ISO 9660 image (a path, or the image's bytes)."""
    try:
        reader = (
            libarchive.memory_reader(iso, format_name="iso9660")
            if isinstance(iso, bytes)
            else libarchive.file_reader(str(iso), format_name="iso9660")
        )
        with reader as archive:
            for entry in archive:
                if entry.pathname.rstrip("/") == member:
                    return b"".join(entry.get_blocks())
    except ArchiveError as exc:
        raise ComposeError(f"cannot read ISO {name}: {exc.msg}", "the ISO is damaged; rebuild it") from None
    raise ComposeError(f"{name} has no /{member}", "is it an ISO written by `compose-initrd iso`?")


def _obdr_iso(target: Path) -> bytes:
    from initrd_composer.media.obdr_writer import read_obdr_iso  # noqa: PLC0415

    return read_obdr_iso(target)


def open_medium(path: Path) -> InitrdImage:
    """The initrd of `path`, whatever carries it."""
    if path.is_dir() or path.is_char_device():  # a tape-image directory, or /dev/nstN
        return parse_image(iso_member(_obdr_iso(path), ISO_INITRD, str(path)), f"{path}:{ISO_INITRD}")
    try:
        with path.open("rb") as f:
            head = f.read(_ISO_MAGIC_AT + 8)
    except OSError as exc:
        raise ComposeError(f"cannot read {path}: {exc.strerror}", "check the path of the image") from None
    if is_iso(head):
        return parse_image(iso_member(path, ISO_INITRD, str(path)), f"{path}:{ISO_INITRD}")
    return open_image(path)
