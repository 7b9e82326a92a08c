"""Kernel module files on the build host: decompression and .modinfo (pyelftools)."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from initrd_composer.errors import ComposeError
from initrd_composer.image.compression import DecompressError, decompress_any
from module_db.index_files import parse_modinfo

_HINT = "reinstall the kernel package or run depmod; check the file with `modinfo`"


def decompressed_name(path: str) -> str:
    """'x.ko.xz' -> 'x.ko': the name a module has in the image once unpacked."""
    for suffix in (".xz", ".zst", ".gz"):
        if path.endswith(".ko" + suffix):
            return path[: -len(suffix)]
    return path


def read_module(path: Path, decompress: bool = True) -> bytes:
    """The module's bytes, decompressed by its suffix unless `decompress` is False."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ComposeError(f"module file missing: {path}", _HINT) from None
    except OSError as exc:
        raise ComposeError(f"cannot read module {path}: {exc.strerror}", _HINT) from None
    if not decompress or not path.name.endswith((".xz", ".zst", ".gz")):
        return raw
    try:
        return decompress_any(raw, str(path))
    except DecompressError as exc:  # a truncated stream too: never a short module
        raise ComposeError(f"corrupt compressed module {path}: {exc.detail}", _HINT) from None


_ELF64_LE = b"\x7fELF\x02\x01"


def modinfo_section_fast(data: bytes) -> bytes | None:
    """The .modinfo bytes of a little-endian ELF64 module read straight from the section
    table, or None to let pyelftools decide (other classes, extended numbering, damage).

    pyelftools builds an object per section (50+ per module): ~1 ms a module, most of a
    cold build. tests/test_module_files.py checks this path against pyelftools for every
    module of the installed kernel.
    """
    if not data.startswith(_ELF64_LE) or len(data) < 64:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shnum == 0 or shentsize < 64 or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        return None
    str_off, str_size = struct.unpack_from("<QQ", data, shoff + shstrndx * shentsize + 0x18)
    wanted = b".modinfo\0"
    for i in range(shnum):
        base = shoff + i * shentsize
        name, = struct.unpack_from("<I", data, base)
        if name + len(wanted) <= str_size and data.startswith(wanted, str_off + name):
            offset, size = struct.unpack_from("<QQ", data, base + 0x18)
            if offset + size > len(data):
                return None
            return data[offset : offset + size]
    return None


def modinfo_from_elf(data: bytes, path: Path) -> dict[str, list[str]]:
    """Parse the .modinfo section of an (uncompressed) module."""
    if not data.startswith(b"\x7fELF"):
        raise ComposeError(f"not an ELF kernel module: {path}", _HINT)
    fast = modinfo_section_fast(data)
    if fast is not None:
        return parse_modinfo(fast)
    try:
        section = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
        payload: bytes = b"" if section is None else section.data()
    except (ELFError, ValueError, OSError) as exc:
        raise ComposeError(f"corrupt ELF kernel module {path}: {exc}", _HINT) from None
    if section is None:
        raise ComposeError(f"kernel module without .modinfo: {path}", _HINT)
    return parse_modinfo(payload)


class ModinfoCache:
    """Firmware names per module file, remembered across builds by (size, mtime, inode).

    Parsing ELF is most of a cold build's time; the answer only changes when the file does.
    """

    def __init__(self, cache_file: Path | None) -> None:
        self._file = cache_file
        self._entries: dict[str, list[object]] = {}
        self._dirty = False
        if cache_file is not None:
            try:
                loaded = json.loads(cache_file.read_text())
                if isinstance(loaded, dict):
                    self._entries = loaded
            except (OSError, ValueError):
                pass  # none yet, or unreadable: it is rebuilt, which only costs time

    @staticmethod
    def _stamp(path: Path) -> list[object]:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def firmware(self, path: Path, data: bytes | None = None) -> tuple[str, ...]:
        key = str(path)
        try:
            stamp = self._stamp(path)
        except OSError:
            raise ComposeError(f"module file missing: {path}", _HINT) from None
        hit = self._entries.get(key)
        if hit is not None and hit[:3] == stamp:
            return tuple(str(x) for x in hit[3:])
        if data is None:
            data = read_module(path)
        names = tuple(modinfo_from_elf(data, path).get("firmware", []))
        self._entries[key] = [*stamp, *names]
        self._dirty = True
        return names

    def save(self) -> None:
        if self._file is None or not self._dirty:
            return
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._entries, separators=(",", ":")))
            os.replace(tmp, self._file)
        except OSError:
            pass  # a cache that cannot be written only costs time


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "initrd-composer"
