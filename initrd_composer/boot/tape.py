"""Tape access shared by the host's OBDR writer and /init's tape and OBDR restores (stdlib only).

Two kinds of tape behind one `Tape` interface:

- `DeviceTape`: a Linux SCSI tape (`/dev/nstN`, the `st` driver) driven with read/write and the
  MTIOCTOP ioctl. The syscall layer is injectable (`TapeSyscalls`) so tests plug in a drive model.
- `TapeImageDir`: a directory standing for a tape, for tests and for copying to a drive later.

Tape-image directory format (version 1):

    DIR/file-000.bin   the bytes of tape file 0: its blocks concatenated, nothing else
    DIR/file-001.bin   tape file 1, ...
    DIR/tape.json      the manifest, written LAST: a directory without it is not a tape image

    tape.json = {"format": "initrd-composer-tape-image", "version": 1,
                 "files": [{"name": "file-000.bin", "block_size": 512, "compression": false,
                            "blocks": [[512, 20]], "bytes": 10240, "sha256": "..."}, ...]}

`block_size` is the drive mode the file was written in (0 = variable); `blocks` lists the
records as runs of [length, count], so a reader gets back exactly the records written (a
variable-mode file may mix lengths); `compression` is the drive's compression setting then.
Each filemark ends one file; files are numbered from 0 as `mt fsf N` counts them.

An OBDR tape (HP One-Button Disaster Recovery) is: file 0, a 10 KiB header of twenty 512-byte
blocks (the drive's CD-ROM emulation skips it and looks for the El Torito record at the 18th
2048-byte sector after it); file 1, the bootable ISO in 2048-byte blocks; file 2, the restore
data. Our header's first bytes are a text label (`obdr_label`) that says what follows.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

# <linux/mtio.h> operation codes (checked against Debian 12's /usr/include/linux/mtio.h).
MTFSF = 1  # forward space over filemarks; positioned after the last one
MTBSF = 2  # backward space over filemarks; positioned before (BOT side of) the last one
MTWEOF = 5  # write filemarks
MTREW = 6  # rewind
MTSETBLK = 20  # set block length; 0 = variable-length records
MTCOMPRESSION = 32  # drive compression on (1) / off (0), SCSI mode page 15

# struct mtop { short mt_op; int mt_count; }: 8 bytes with the C alignment.
MTOP = struct.Struct("@hi")
# struct mtget { long mt_type, mt_resid, mt_dsreg, mt_gstat, mt_erreg;
#                __kernel_daddr_t mt_fileno, mt_blkno; }: 48 bytes on 64-bit.
MTGET = struct.Struct("@5l2i")


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    # asm-generic/ioctl.h encoding (x86, arm, riscv): dir<<30 | size<<16 | type<<8 | nr.
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


MTIOCTOP = _ioc(1, "m", 1, MTOP.size)  # _IOW('m', 1, struct mtop): 0x40086d01 on x86-64
MTIOCGET = _ioc(2, "m", 2, MTGET.size)  # _IOR('m', 2, struct mtget): 0x80306d02 on x86-64
GMT_BOT = 0x40000000
GMT_WR_PROT = 0x04000000
GMT_ONLINE = 0x01000000
GMT_DR_OPEN = 0x00040000
MT_ST_BLKSIZE_MASK = 0xFFFFFF

# The largest record a variable-mode read accepts; covers 512 B .. 1 MiB blocks. The st driver
# fails a read whose buffer is smaller than the record (ENOMEM), so this must not be too small.
MAX_BLOCK = 1 << 20
MANIFEST = "tape.json"
IMAGE_FORMAT = "initrd-composer-tape-image"
IMAGE_VERSION = 1

OBDR_HEADER_BLOCK = 512
OBDR_HEADER_BLOCKS = 20
OBDR_ISO_BLOCK = 2048
OBDR_MAGIC = b"initrd-composer OBDR 1\n"


class TapeError(Exception):
    """A tape failure with a hint; the host side turns it into ComposeError."""

    def __init__(self, message: str, hint: str = "", err: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.errno = err


class TapeSyscalls(Protocol):
    """The system calls DeviceTape makes; tests replace them with a drive model."""

    def open(self, path: str, flags: int) -> int: ...
    def close(self, fd: int) -> None: ...
    def read(self, fd: int, size: int) -> bytes: ...
    def write(self, fd: int, data: bytes) -> int: ...
    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes: ...


class OsSyscalls:
    """The real ones."""

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        return fcntl.ioctl(fd, request, arg)


class Tape(Protocol):
    """What the OBDR writer and the restore readers need from a tape."""

    name: str

    def set_block_size(self, size: int) -> None: ...
    def set_compression(self, on: bool) -> None: ...
    def write_block(self, data: bytes) -> None: ...
    def write_filemark(self) -> None: ...
    def rewind(self) -> None: ...
    def skip_files(self, count: int) -> None: ...
    def read_block(self, max_size: int = MAX_BLOCK) -> bytes: ...
    def close(self) -> None: ...


def _hint(err: int, what: str) -> str:
    hints = {
        errno.ENOSPC: "the tape is full: use a larger cartridge or less data",
        errno.EINVAL: f"the drive refused {what}: choose a value it supports (mt -f DEVICE status)",
        errno.EIO: "clean the drive, try another cartridge, and see the kernel log (dmesg)",
        errno.EROFS: "the cartridge is write-protected: slide its tab or use another one",
        errno.EACCES: "the cartridge is write-protected or the device is not writable by you",
        errno.ENOMEDIUM: "load a cartridge into the drive",
        errno.EBUSY: "another program holds the drive: stop it and try again",
        errno.ENOENT: "check the device name (ls /dev/nst*) and that the st module is loaded",
        errno.ENXIO: "check the device name (ls /dev/nst*) and that the drive is connected",
        errno.ENOMEM: "the record is larger than the read buffer: raise the maximum block size",
    }
    return hints.get(err, "see the kernel log (dmesg) for the drive's own message")


@dataclass(frozen=True)
class TapeStatus:
    """MTIOCGET, decoded: where the tape is and what the drive says of it."""

    file_number: int
    block_number: int
    block_size: int
    at_bot: bool
    online: bool
    write_protected: bool
    door_open: bool


class DeviceTape:
    """A tape drive through the Linux st driver. One fd for the whole session, so a
    rewinding device (/dev/stN) would also do; the non-rewinding one is what restores use."""

    def __init__(self, path: str | os.PathLike[str], *, write: bool = False,
                 syscalls: TapeSyscalls | None = None) -> None:
        self.name = os.fspath(path)
        self._sys: TapeSyscalls = syscalls or OsSyscalls()
        self._block_size = 0
        try:
            self._fd = self._sys.open(self.name, os.O_RDWR if write else os.O_RDONLY)
        except OSError as exc:
            raise self._error(exc, "cannot open", "the device") from exc

    def _error(self, exc: OSError, action: str, what: str) -> TapeError:
        err = exc.errno or errno.EIO
        return TapeError(f"{self.name}: {action}: {os.strerror(err)}", _hint(err, what), err)

    def _op(self, op: int, count: int, action: str, what: str = "the operation") -> None:
        try:
            self._sys.ioctl(self._fd, MTIOCTOP, MTOP.pack(op, count))
        except OSError as exc:
            raise self._error(exc, action, what) from exc

    def set_block_size(self, size: int) -> None:
        self._op(MTSETBLK, size, f"setting block size {size} failed", f"block size {size}")
        self._block_size = size

    def set_compression(self, on: bool) -> None:
        state = "on" if on else "off"
        self._op(MTCOMPRESSION, int(on), f"turning compression {state} failed", f"compression {state}")

    def write_block(self, data: bytes) -> None:
        """Write one record (variable mode) or whole blocks (fixed mode, len a multiple)."""
        if self._block_size and len(data) % self._block_size:
            raise TapeError(f"{self.name}: {len(data)} bytes is not a whole number of "
                            f"{self._block_size}-byte blocks", "pad the data to whole blocks")
        try:
            done = self._sys.write(self._fd, data)
        except OSError as exc:
            raise self._error(exc, "write failed", "the write") from exc
        if done != len(data):  # st reports the early end-of-medium warning as a short write
            raise TapeError(f"{self.name}: end of tape after {done} of {len(data)} bytes",
                            _hint(errno.ENOSPC, "the write"), errno.ENOSPC)

    def write_filemark(self) -> None:
        self._op(MTWEOF, 1, "writing a filemark failed")

    def rewind(self) -> None:
        self._op(MTREW, 1, "rewind failed")

    def skip_files(self, count: int) -> None:
        """count > 0: to the start of the count-th next file (mt fsf); count < 0: back over
        -count filemarks, ending just before the last one crossed (mt bsf)."""
        if count > 0:
            self._op(MTFSF, count, f"skipping {count} files failed")
        elif count < 0:
            self._op(MTBSF, -count, f"skipping back {-count} files failed")

    def read_block(self, max_size: int = MAX_BLOCK) -> bytes:
        """The next record (variable mode) or block (fixed mode); b"" at a filemark."""
        size = self._block_size or max_size
        try:
            return self._sys.read(self._fd, size)
        except OSError as exc:
            raise self._error(exc, "read failed", "the read") from exc

    def status(self) -> TapeStatus:
        try:
            raw = self._sys.ioctl(self._fd, MTIOCGET, bytes(MTGET.size))
        except OSError as exc:
            raise self._error(exc, "status query (MTIOCGET) failed", "MTIOCGET") from exc
        _type, _resid, dsreg, gstat, _erreg, fileno, blkno = MTGET.unpack(raw)
        return TapeStatus(fileno, blkno, dsreg & MT_ST_BLKSIZE_MASK, bool(gstat & GMT_BOT),
                          bool(gstat & GMT_ONLINE), bool(gstat & GMT_WR_PROT), bool(gstat & GMT_DR_OPEN))

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                self._sys.close(fd)  # st writes a filemark here if the last thing was a write
            except OSError as exc:
                raise self._error(exc, "close failed", "the close") from exc


def _file_name(index: int) -> str:
    return f"file-{index:03d}.bin"


@dataclass
class _OpenFile:
    """The tape file being written into an image directory."""

    index: int
    out: BinaryIO
    block_size: int
    compression: bool
    runs: list[list[int]] = field(default_factory=list)
    size: int = 0
    sha: Any = field(default_factory=hashlib.sha256)


class TapeImageDir:
    """A tape-image directory (format in the module docstring): `create` for writing, `open`
    for reading. Writing appends files; `close` writes tape.json. Leaving a `with` block by
    an exception, or never calling close, leaves no tape.json: not a tape image."""

    def __init__(self, path: Path, files: list[dict[str, Any]], writing: bool) -> None:
        self.path = path
        self.name = str(path)
        self._files = files
        self._writing = writing
        self._block_size = 0
        self._compression = False
        self._current: _OpenFile | None = None
        self._closed = False
        # Read position: file index, and within it run index, count into the run, and the handle.
        self._file = 0
        self._run = 0
        self._in_run = 0
        self._handle: BinaryIO | None = None

    @classmethod
    def create(cls, path: Path) -> TapeImageDir:
        path = Path(path)
        if not path.is_dir() or any(path.iterdir()):
            raise TapeError(f"{path}: a tape image needs an empty directory", "give a new directory")
        return cls(path, [], writing=True)

    @classmethod
    def open(cls, path: Path) -> TapeImageDir:
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise TapeError(f"{path}: not a tape image (no {MANIFEST})",
                            "an image without its manifest was never finished: write it again") from None
        except (OSError, ValueError) as exc:
            raise TapeError(f"{path}/{MANIFEST}: unreadable: {exc}", "write the image again") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != IMAGE_FORMAT:
            raise TapeError(f"{path}/{MANIFEST}: not an {IMAGE_FORMAT} manifest", "")
        if manifest.get("version") != IMAGE_VERSION:
            raise TapeError(f"{path}: tape image version {manifest.get('version')} is not supported",
                            f"this reader knows version {IMAGE_VERSION}")
        files: list[dict[str, Any]] = manifest["files"]
        for entry in files:
            actual = (path / entry["name"]).stat().st_size if (path / entry["name"]).exists() else -1
            if actual != entry["bytes"]:
                raise TapeError(f"{path}/{entry['name']}: {actual} bytes, the manifest says "
                                f"{entry['bytes']}", "the image is damaged: write it again")
        return cls(path, files, writing=False)

    def __enter__(self) -> TapeImageDir:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close()
        else:
            self._abandon()

    @property
    def files(self) -> list[dict[str, Any]]:
        """The manifest entries (after close, or of an opened image)."""
        return list(self._files)

    def file_path(self, index: int) -> Path:
        """The bytes of tape file `index`: for an OBDR image, file 1 is the ISO itself."""
        if not 0 <= index < len(self._files):
            raise TapeError(f"{self.path}: no tape file {index} (the image has {len(self._files)})", "")
        name: str = self._files[index]["name"]
        return self.path / name

    # -- writing --------------------------------------------------------------------------
    def _need(self, writing: bool) -> None:
        if self._closed or self._writing != writing:
            mode = "written" if writing else "read"
            raise TapeError(f"{self.path}: this tape image cannot be {mode} now", "")

    def set_block_size(self, size: int) -> None:
        if size < 0 or size > MT_ST_BLKSIZE_MASK:
            raise TapeError(f"{self.path}: block size {size} out of range", _hint(errno.EINVAL, "it"),
                            errno.EINVAL)
        self._block_size = size

    def set_compression(self, on: bool) -> None:
        self._compression = on

    def write_block(self, data: bytes) -> None:
        self._need(writing=True)
        size = self._block_size
        if not data or (size and len(data) % size):
            raise TapeError(f"{self.path}: {len(data)} bytes is not a whole number of "
                            f"{size or 'variable'}-byte blocks", "pad the data to whole blocks",
                            errno.EINVAL)
        cur = self._current
        if cur is None:
            index = len(self._files)
            out = open(self.path / _file_name(index), "wb")  # closed at the filemark
            cur = self._current = _OpenFile(index, out, size, self._compression)
        length, count = (size, len(data) // size) if size else (len(data), 1)
        if cur.runs and cur.runs[-1][0] == length:
            cur.runs[-1][1] += count
        else:
            cur.runs.append([length, count])
        cur.out.write(data)
        cur.sha.update(data)
        cur.size += len(data)

    def write_filemark(self) -> None:
        self._need(writing=True)
        cur = self._current
        if cur is None:  # two filemarks in a row: an empty file between them
            index = len(self._files)
            (self.path / _file_name(index)).write_bytes(b"")
            entry = {"block_size": self._block_size, "compression": self._compression, "blocks": [],
                     "bytes": 0, "sha256": hashlib.sha256().hexdigest()}
        else:
            cur.out.close()
            index = cur.index
            entry = {"block_size": cur.block_size, "compression": cur.compression, "blocks": cur.runs,
                     "bytes": cur.size, "sha256": cur.sha.hexdigest()}
        self._files.append({"name": _file_name(index), **entry})
        self._current = None

    def _abandon(self) -> None:
        if self._current is not None:
            self._current.out.close()
            self._current = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._closed = True

    def close(self) -> None:
        """Writing: end a pending file (as st does on close) and write tape.json, last."""
        if self._closed:
            return
        if self._writing:
            if self._current is not None:
                self.write_filemark()
            manifest = {"format": IMAGE_FORMAT, "version": IMAGE_VERSION, "files": self._files}
            tmp = self.path / f".{MANIFEST}.tmp"
            with open(tmp, "w") as out:
                json.dump(manifest, out, indent=1)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path / MANIFEST)
        self._abandon()

    # -- reading --------------------------------------------------------------------------
    def rewind(self) -> None:
        self._seek(0, at_end=False)

    def _seek(self, index: int, *, at_end: bool) -> None:
        if self._writing:
            raise TapeError(f"{self.path}: a tape image being written cannot be positioned", "")
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._file, self._run, self._in_run = index, 0, 0
        if at_end:
            self._run = len(self._files[index]["blocks"])

    def skip_files(self, count: int) -> None:
        target = self._file + count
        if count > 0 and target > len(self._files):
            raise TapeError(f"{self.path}: only {len(self._files)} files on this tape",
                            "end of recorded data reached", errno.EIO)
        if count < 0:
            if target < 0:
                raise TapeError(f"{self.path}: beginning of tape reached", "", errno.EIO)
            self._seek(target, at_end=True)  # before that file's filemark
        elif count > 0:
            self._seek(target, at_end=False)

    def read_block(self, max_size: int = MAX_BLOCK) -> bytes:
        self._need(writing=False)
        if self._file >= len(self._files):
            raise TapeError(f"{self.path}: end of recorded data (after file {len(self._files) - 1})",
                            "the tape has fewer files than expected", errno.EIO)
        runs = self._files[self._file]["blocks"]
        while self._run < len(runs) and self._in_run >= runs[self._run][1]:
            self._run, self._in_run = self._run + 1, 0
        if self._run >= len(runs):  # the filemark: report it and move past it
            self._seek(self._file + 1, at_end=False)
            return b""
        if self._handle is None:
            self._handle = open(self.file_path(self._file), "rb")  # closed on seek
            skip = sum(length * count for length, count in runs[: self._run])
            self._handle.seek(skip + runs[self._run][0] * self._in_run)
        length = runs[self._run][0]
        self._in_run += 1
        data = self._handle.read(length)
        if len(data) != length:
            raise TapeError(f"{self.file_path(self._file)}: truncated", "write the image again", errno.EIO)
        if length > max_size:
            raise TapeError(f"{self.path}: a {length}-byte record is larger than {max_size}",
                            _hint(errno.ENOMEM, "the read"), errno.ENOMEM)
        return data


def is_tape_image(path: Path) -> bool:
    """A finished tape-image directory (its manifest is there)."""
    return (Path(path) / MANIFEST).is_file()


# -- readers the restore uses -----------------------------------------------------------------
def read_tape_file(tape: Tape, index: int, *, max_block: int = MAX_BLOCK) -> Iterator[bytes]:
    """The records of tape file `index`, from the beginning of the tape. Variable mode, so
    each read returns one record whatever block size it was written with."""
    tape.rewind()
    tape.set_block_size(0)
    tape.skip_files(index)
    while block := tape.read_block(max_block):
        yield block


@dataclass(frozen=True)
class TapeFileInfo:
    index: int
    bytes: int
    blocks: int
    block_size: int  # of the first record; 0 for an empty file
    sha256: str


def copy_tape_file(tape: Tape, index: int, out: BinaryIO, *, max_block: int = MAX_BLOCK) -> TapeFileInfo:
    """Write tape file `index` into `out`; its size, record count and sha256."""
    sha = hashlib.sha256()
    size = blocks = first = 0
    for block in read_tape_file(tape, index, max_block=max_block):
        first = first or len(block)
        out.write(block)
        sha.update(block)
        size += len(block)
        blocks += 1
    return TapeFileInfo(index, size, blocks, first, sha.hexdigest())


class _TapeFileStream(io.RawIOBase):
    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = next(self._blocks, b"")
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def open_tape_file(tape: Tape, index: int, *, max_block: int = MAX_BLOCK) -> BinaryIO:
    """Tape file `index` as a read-only byte stream (e.g. for `tarfile.open(mode="r|")`), so
    a restore extracts straight from the tape without a copy."""
    return blocks_stream(read_tape_file(tape, index, max_block=max_block), max_block=max_block)


def blocks_stream(blocks: Iterator[bytes], *, max_block: int = MAX_BLOCK) -> BinaryIO:
    """Records, as they are read, as one byte stream."""
    return io.BufferedReader(_TapeFileStream(blocks), buffer_size=max(max_block, io.DEFAULT_BUFFER_SIZE))


def detect_block_size(tape: Tape, index: int, *, max_block: int = MAX_BLOCK) -> int:
    """The size of the first record of file `index` (0 for an empty file); rewinds after."""
    block = next(read_tape_file(tape, index, max_block=max_block), b"")
    tape.rewind()
    return len(block)


# -- the OBDR header ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ObdrLabel:
    """What our OBDR header says of the tape after it."""

    iso_bytes: int
    data_bytes: int | None  # the tar stream before padding; None: no data file
    data_block_size: int | None


def obdr_header(label: ObdrLabel) -> bytes:
    """The 10 KiB first file: a text label, then NULs. The drive does not read it (it skips
    20 blocks), so its contents are ours; no timestamps, so one input gives one header."""
    lines = [f"iso-bytes={label.iso_bytes}"]
    if label.data_bytes is not None:
        lines += [f"data-bytes={label.data_bytes}", f"data-block-size={label.data_block_size}"]
    text = OBDR_MAGIC + "".join(line + "\n" for line in lines).encode()
    return text.ljust(OBDR_HEADER_BLOCK * OBDR_HEADER_BLOCKS, b"\0")


def parse_obdr_label(header: bytes) -> ObdrLabel | None:
    """The label of a header written by `obdr_header`; None for other OBDR tapes
    (MondoRescue writes zeros there, ReaR `REAR-000`)."""
    if not header.startswith(OBDR_MAGIC):
        return None
    fields: dict[str, int] = {}
    for line in header[len(OBDR_MAGIC):].split(b"\0", 1)[0].decode("ascii", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and value.isdigit():
            fields[key] = int(value)
    if "iso-bytes" not in fields:
        return None
    return ObdrLabel(fields["iso-bytes"], fields.get("data-bytes"), fields.get("data-block-size"))
