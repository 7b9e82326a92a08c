"""A pure writer of glibc's /etc/ld.so.cache ("new" format only, as glibc >= 2.32 writes it).

The image carries no ldconfig run at build time: we write the cache ourselves from the
libraries we put in, so ld.so finds libraries outside its trusted directories and
`ldconfig -p` (which ctypes.util.find_library runs) lists what pyudev and libarchive-c dlopen.

Layout (little endian):
  header, 48 bytes: magic "glibc-ld.so.cache" + version "1.1", nlibs u32, len_strings u32,
                    flags u8 (2 = little endian) + 3 pad, extension_offset u32 (0 = none),
                    3 x u32 unused
  nlibs entries, 24 bytes each: flags i32, key u32, value u32, osversion u32, hwcap u64
                    (key/value are offsets of NUL-terminated strings from the file start)
  string table
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

CACHE_MAGIC = b"glibc-ld.so.cache1.1"
FLAG_ELF_LIBC6 = 0x0003
FLAG_X8664_LIB64 = 0x0300
_HEADER = struct.Struct("<20sIIB3xI12x")
_ENTRY = struct.Struct("<iIIIQ")
_ENDIAN_LITTLE = 2


def dl_cache_libcmp(left: str, right: str) -> int:
    """glibc's _dl_cache_libcmp: byte order, except that digit runs compare as numbers.

    Returns <0, 0 or >0. ld.so binary-searches the cache with this order, so the file
    must be sorted by it exactly (descending, see build_ld_so_cache).
    """
    a = left.encode()
    b = right.encode()
    i = j = 0
    while i < len(a):
        if _isdigit(a, i):
            if not _isdigit(b, j):
                return 1
            start = i
            while _isdigit(a, i):
                i += 1
            value_a = int(a[start:i])
            start = j
            while _isdigit(b, j):
                j += 1
            value_b = int(b[start:j])
            if value_a != value_b:
                return value_a - value_b
        elif _isdigit(b, j):
            return -1
        elif j >= len(b) or a[i] != b[j]:
            return _signed(a[i]) - (_signed(b[j]) if j < len(b) else 0)
        else:
            i += 1
            j += 1
    return -(_signed(b[j]) if j < len(b) else 0)


def _isdigit(data: bytes, index: int) -> bool:
    return index < len(data) and 0x30 <= data[index] <= 0x39


def _signed(byte: int) -> int:
    # glibc compares plain `char`, which is signed on x86-64
    return byte - 256 if byte > 127 else byte


def build_ld_so_cache(
    libraries: Iterable[tuple[str, str]], flags: int = FLAG_ELF_LIBC6 | FLAG_X8664_LIB64
) -> bytes:
    """The bytes of an ld.so.cache mapping each soname to an absolute library path.

    The first path given for a soname wins. Output depends only on the input set.
    """
    chosen: dict[str, str] = {}
    for soname, path in libraries:
        if not soname or "/" in soname or not path.startswith("/"):
            raise ValueError(f"bad ld.so.cache entry {soname!r} -> {path!r}")
        chosen.setdefault(soname, path)
    # Python's sort wants a key; a stable two-pass sort is simplest: by name, then by libcmp.
    names = sorted(chosen)
    names.sort(key=_LibcmpKey, reverse=True)

    strings_start = _HEADER.size + _ENTRY.size * len(names)
    table = bytearray()
    offsets: dict[str, int] = {}

    def intern(text: str) -> int:
        if text not in offsets:
            offsets[text] = strings_start + len(table)
            table.extend(text.encode() + b"\0")
        return offsets[text]

    entries = bytearray()
    for name in names:
        key = intern(name)
        value = intern(chosen[name])
        entries.extend(_ENTRY.pack(flags, key, value, 0, 0))
    header = _HEADER.pack(CACHE_MAGIC, len(names), len(table), _ENDIAN_LITTLE, 0)
    return bytes(header + entries + table)


class _LibcmpKey:
    """Sort key adapter for dl_cache_libcmp."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __lt__(self, other: _LibcmpKey) -> bool:
        return dl_cache_libcmp(self.name, other.name) < 0
