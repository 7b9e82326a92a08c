"""Compress the image's main cpio stream, and decompress any format an initrd may use.

Writing offers what the kernel decompresses and this tool can make reproducibly:
zstd (multi-threaded, yet byte-identical whatever the thread count), xz (CRC32 check: the
kernel's xz decoder knows no other), gzip (no name, mtime 0) and none. Reading also takes
bzip2, legacy lzma and lz4, since other tools' initrds use them.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import libarchive
import zstandard

from initrd_composer.errors import ComposeError, UsageError

COMPRESSIONS = ("zstd", "xz", "gzip", "none")

# zstd level 6 is the default: on Debian 6.1's --all-nics image it writes ~190 MB of
# content in ~1.2 s on 2 cores, ~8% smaller than level 3, while level 9 costs another
# 0.5-2 s for 4% (BENCHMARKS.md has the table).
DEFAULT_LEVELS = {"zstd": 6, "xz": 6, "gzip": 6}
LEVEL_RANGES = {"zstd": range(1, 20), "xz": range(0, 10), "gzip": range(1, 10)}

# Magic numbers, longest first where one could shadow another.
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x02\x21\x4c\x18", "lz4"),  # legacy frame, what the kernel's unlz4 reads
    (b"\x04\x22\x4d\x18", "lz4"),  # modern frame
    (b"\x89LZO", "lzo"),
    (b"070701", "none"),
    (b"070702", "none"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
)


class DecompressError(ComposeError):
    """Unknown, corrupt or truncated compressed data. `detail` is the message without the
    leading name, for callers that name the file in their own words."""

    def __init__(self, what: str, detail: str, hint: str = "") -> None:
        super().__init__(f"{what}: {detail}", hint)
        self.detail = detail


class ByteSink(Protocol):
    """Anything bytes can be written to: a file, BytesIO, or a compressing writer."""

    def write(self, data: bytes, /) -> object: ...


class _ObjCompressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: bytes, /) -> bytes: ...


class _ChunkCompressor:
    """Feeds each write through a zstd/lzma/zlib compressobj into `out`."""

    def __init__(self, out: ByteSink, comp: _ObjCompressor) -> None:
        self._out = out
        self._comp = comp

    def write(self, data: bytes, /) -> int:
        produced = self._comp.compress(data)
        if produced:
            self._out.write(produced)
        return len(data)

    def finish(self) -> None:
        self._out.write(self._comp.flush())


def resolve_level(name: str, level: int | None) -> int | None:
    """The level to use for compressor `name` (None for 'none'); UsageError when invalid."""
    if name not in COMPRESSIONS:
        raise UsageError(f"unknown compression {name!r}", f"choose one of {', '.join(COMPRESSIONS)}")
    if name == "none":
        return None
    if level is None:
        return DEFAULT_LEVELS[name]
    allowed = LEVEL_RANGES[name]
    if level not in allowed:
        raise UsageError(
            f"invalid {name} level {level}",
            f"choose a level from {allowed.start} to {allowed.stop - 1}",
        )
    return level


@contextmanager
def compressing(out: ByteSink, name: str, level: int | None = None, threads: int = -1) -> Iterator[ByteSink]:
    """Yield a sink whose writes reach `out` compressed with `name`; the stream is
    finished when the block exits normally. `out` is never closed.

    `threads` only matters for zstd (-1: all cores); the output does not depend on it
    as long as it is not 0 (0 selects zstd's single-threaded framing).
    """
    chosen = resolve_level(name, level)
    if chosen is None:
        yield out
        return
    comp: _ObjCompressor
    if name == "zstd":
        # Plain level parameters: long-distance matching over a 128 MiB window saved ~1%
        # but made multi-threaded output vary from run to run (1 in 5 in
        # test_zstd_output_independent_of_thread_count), and images must be reproducible.
        cctx = zstandard.ZstdCompressor(level=chosen, threads=threads, write_checksum=True)
        comp = cctx.compressobj()
    elif name == "xz":
        comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=chosen)
    else:
        # wbits 31: a gzip header with mtime 0 and no file name, so output is reproducible.
        comp = zlib.compressobj(chosen, zlib.DEFLATED, 31)
    chunked = _ChunkCompressor(out, comp)
    yield chunked
    chunked.finish()


def compress_bytes(data: bytes, name: str, level: int | None = None, threads: int = -1) -> bytes:
    """`data` compressed exactly as `compressing` would stream it."""
    parts: list[bytes] = []

    class _Collect:
        def write(self, chunk: bytes, /) -> int:
            parts.append(bytes(chunk))
            return len(chunk)

    with compressing(_Collect(), name, level, threads) as sink:
        sink.write(data)
    return b"".join(parts)


def detect_compression(data: bytes | memoryview) -> str | None:
    """The compression whose magic starts `data` ('none' for a bare newc cpio), or None."""
    head = bytes(data[:6])
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return None


def decompress_prefix(data: bytes | memoryview, what: str = "data") -> tuple[bytes, int]:
    """Decompress the one compressed stream that starts `data`.

    Returns (output, bytes consumed), so a caller can go on with whatever follows, as the
    kernel does with concatenated initrd segments. lz4 is taken to run to the end.
    Raises DecompressError naming `what` for unknown, corrupt or truncated input.
    """
    name = detect_compression(data)
    if name is None or name == "none":
        raise DecompressError(what, "not compressed data of a known format")
    if name == "lz4":
        return _lz4_all(bytes(data), what), len(data)
    if name == "lzo":
        raise DecompressError(what, "lzo compression is not supported", "recompress it")
    dec: _Decompressor
    if name == "zstd":
        dec = zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj()
    elif name == "xz":
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elif name == "lzma":
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
    elif name == "bzip2":
        dec = bz2.BZ2Decompressor()
    else:
        dec = zlib.decompressobj(31)
    try:
        output = dec.decompress(data)
    except (zstandard.ZstdError, lzma.LZMAError, OSError, zlib.error, EOFError) as exc:
        raise DecompressError(what, f"corrupt {name} data: {exc}") from exc
    if not dec.eof:
        raise DecompressError(what, f"truncated {name} data", "the file is incomplete")
    return output, len(data) - len(dec.unused_data)


def _lz4_all(data: bytes, what: str) -> bytes:
    # No lz4 module is installed; libarchive's raw format reads both lz4 framings.
    try:
        with libarchive.memory_reader(data, format_name="raw", filter_name="lz4") as archive:
            for entry in archive:
                return b"".join(entry.get_blocks())
    except libarchive.ArchiveError as exc:
        raise DecompressError(what, f"corrupt lz4 data: {exc.msg}") from exc
    raise DecompressError(what, "empty lz4 data")


def decompress_any(data: bytes, what: str = "data") -> bytes:
    """Decompress `data` of any known format by its magic; concatenated streams (with zero
    padding between them, as the kernel allows) are decompressed one after another. The one
    decompressor of the host side: initrd segments, compressed modules and firmware."""
    parts: list[bytes] = []
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if view[pos] == 0:
            pos += 1
            continue
        output, used = decompress_prefix(view[pos:], what)
        parts.append(output)
        pos += used
    return b"".join(parts)
