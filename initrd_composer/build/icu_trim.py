"""Shrink ICU's data library to what the image can use: the charset converters.

libarchive needs libxml2 (for xar), which needs ICU, whose data library
(libicudata.so, 31 MB) holds locales, collation, time zones, break iterators...
The rescue image only ever asks ICU for charset conversion (libxml2's encodings),
so every item but the converters' alias table of the common-data package is zeroed in place: the ELF and
the package's table of contents stay intact, lookups of a zeroed item fail
cleanly (its header no longer carries ICU's magic), and the zeros compress to
almost nothing. The file keeps its size in the image's RAM.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from initrd_composer.errors import ComposeError

# Items kept: the converter alias table. ICU's algorithmic converters (UTF-8/16/32,
# ISO-8859-1, US-ASCII) need no table; the table-driven legacy ones (.cnv, 5 MB, 1.4 MB
# compressed) would only serve a xar archive with legacy-encoded XML.
KEEP_SUFFIXES = ("/cnvalias.icu",)
_MAGIC = (0xDA, 0x27)


def is_icu_data_library(path: str) -> bool:
    return path.rsplit("/", 1)[-1].startswith("libicudata.so")


def _data_symbol(elf: ELFFile) -> tuple[int, int]:
    """File offset and size of the icudtNN_dat symbol."""
    dynsym = elf.get_section_by_name(".dynsym")
    if not isinstance(dynsym, SymbolTableSection):
        raise ValueError("no .dynsym")
    for sym in dynsym.iter_symbols():
        if sym.name.startswith("icudt") and sym.name.endswith("_dat") and sym["st_size"]:
            for seg in elf.iter_segments():
                start = seg["p_vaddr"]
                if seg["p_type"] == "PT_LOAD" and start <= sym["st_value"] < start + seg["p_filesz"]:
                    return sym["st_value"] - start + seg["p_offset"], int(sym["st_size"])
    raise ValueError("no icudtNN_dat symbol")


def trim_icu_data(data: bytes, name: str = "libicudata") -> tuple[bytes, int, int]:
    """Return (new bytes, items kept, items zeroed)."""
    try:
        offset, size = _data_symbol(ELFFile(io.BytesIO(data)))
    except (ELFError, ValueError) as exc:
        raise ComposeError(f"{name}: not an ICU data library ({exc})", "pass --keep-icu-data") from None
    out = bytearray(data)
    header_size, magic1, magic2 = struct.unpack_from("<HBB", data, offset)
    if (magic1, magic2) != _MAGIC or data[offset + 12 : offset + 16] != b"CmnD":
        raise ComposeError(f"{name}: ICU data is not a common-data package", "pass --keep-icu-data")
    toc = offset + header_size
    end = offset + size
    (count,) = struct.unpack_from("<I", data, toc)
    items = [struct.unpack_from("<II", data, toc + 4 + 8 * i) for i in range(count)]
    kept = zeroed = 0
    for i, (name_off, data_off) in enumerate(items):
        start = toc + data_off
        stop = toc + items[i + 1][1] if i + 1 < count else end
        name_end = data.index(b"\0", toc + name_off)
        item = data[toc + name_off : name_end].decode("ascii", errors="replace")
        if item.endswith(KEEP_SUFFIXES):
            kept += 1
            continue
        out[start:stop] = bytes(stop - start)
        zeroed += 1
    return bytes(out), kept, zeroed


def trimmed_icu_file(host: Path) -> bytes:
    return trim_icu_data(host.read_bytes(), str(host))[0]
