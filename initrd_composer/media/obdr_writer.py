"""Write an HP One-Button Disaster Recovery (OBDR) tape: to a drive, or to a tape-image directory.

The layout is what HP drives boot from and what MondoRescue (since 2.2.6) and ReaR write:

    file 0  the header: 10 KiB as twenty 512-byte blocks. In CD-ROM emulation the drive skips
            these 20 blocks and looks for "EL TORITO SPECIFICATION" at byte 7 of the 18th
            2048-byte record after them (the ISO's boot record, sector 17); without it the drive
            ejects the tape. MondoRescue writes zeros there, ReaR a label; we write a text label
            (`boot.tape.obdr_header`) telling the restore the sizes of what follows.
    file 1  the bootable ISO, byte for byte, in 2048-byte blocks (its sectors).
    file 2  the restore data (optional): a pax tar stream of the data directory padded to
            whole blocks of the chosen size.

Each file ends with a filemark. Compression is off for files 0 and 1 (the drive's CD-ROM
emulation reads the records raw) and as requested for the data.

Data block size: 64 KiB by default. Every st driver and HBA transfers 64 KiB in one SCSI
command, DDS and LTO drives stream well with it, and `tar -b 128` / `dd bs=64k` read it back.
MondoRescue writes its own stream in 128 KiB blocks (TAPE_BLOCK_SIZE) and ReaR lets the drive
run in variable mode; either can be chosen with block_size, and the reader (variable-mode
reads) finds the size by itself.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from initrd_composer.atomic_output import atomic_directory
from initrd_composer.boot.tape import (
    OBDR_HEADER_BLOCK,
    OBDR_HEADER_BLOCKS,
    OBDR_ISO_BLOCK,
    DeviceTape,
    ObdrLabel,
    Tape,
    TapeError,
    TapeImageDir,
    is_tape_image,
    obdr_header,
    parse_obdr_label,
    read_tape_file,
)
from initrd_composer.errors import ComposeError
from initrd_composer.media.capacity import check_capacity, mib
from initrd_composer.media.data_archive import ArchivePlan, padded, plan_archive, write_archive

DEFAULT_DATA_BLOCK_SIZE = 65536
ST_MAJOR = 9  # Documentation/admin-guide/devices.txt: char 9 = SCSI tape (st)
_EL_TORITO = b"EL TORITO SPECIFICATION"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class TapeFileReport:
    index: int
    role: Literal["header", "iso", "data"]
    bytes: int
    blocks: int
    block_size: int
    compression: bool | None  # None: the drive took no compression setting
    sha256: str


@dataclass(frozen=True)
class ObdrReport:
    target: Path
    kind: Literal["device", "image"]
    files: tuple[TapeFileReport, ...]
    iso_sha256: str
    data_sha256: str | None  # of tape file 2 as written (the tar stream and its padding)
    data_tar_bytes: int | None  # the tar stream without the padding
    notes: tuple[str, ...]


def check_iso(iso: Path) -> int:
    """The ISO's size, after checking an OBDR drive would boot it (whole 2048-byte sectors,
    an El Torito boot record in sector 17)."""
    try:
        with open(iso, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(17 * OBDR_ISO_BLOCK)
            record = f.read(OBDR_ISO_BLOCK)
    except OSError as exc:
        raise ComposeError(f"cannot read the boot ISO {iso}: {exc.strerror}", "build the ISO first") from exc
    if size == 0 or size % OBDR_ISO_BLOCK:
        raise ComposeError(f"{iso} is not an ISO image ({size} bytes, not whole 2048-byte sectors)",
                           "give the ISO written by `compose-initrd iso`")
    if record[1:6] != b"CD001" or record[7:7 + len(_EL_TORITO)] != _EL_TORITO:
        raise ComposeError(f"{iso} has no El Torito boot record in sector 17",
                           "an OBDR drive ejects such a tape: use a bootable ISO (compose-initrd iso)")
    return size


def check_tape_capacity(iso_bytes: int, data: Path | None, data_bytes: int, capacity: int | None) -> None:
    """ComposeError if the tape (header + ISO + padded data) needs more than `capacity`."""
    needed = OBDR_HEADER_BLOCK * OBDR_HEADER_BLOCKS + iso_bytes + data_bytes
    check_capacity(
        needed, capacity, f"data directory {data}" if data is not None else "the boot ISO",
        "use a larger cartridge (--capacity), leave the data off and restore it over the network, "
        "or split the data",
        detail=f" (with the {mib(iso_bytes, up=True)} MiB boot ISO)",
    )


def open_st_device(path: Path, *, write: bool = True) -> DeviceTape:
    """Open a SCSI tape, after checking it is one (char major 9)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ComposeError(f"no tape drive at {path}: {exc.strerror}",
                           "check the name (ls /dev/nst*) and that the st module is loaded") from exc
    if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != ST_MAJOR:
        raise ComposeError(f"{path} is not a SCSI tape device (st, character major {ST_MAJOR})",
                           "give a tape device such as /dev/nst0, or a new directory for a tape image")
    try:
        return DeviceTape(path, write=write)
    except TapeError as exc:
        raise ComposeError(exc.message, exc.hint) from exc


class _BlockSink:
    """A file-like writer that cuts its input into whole blocks for one tape file."""

    def __init__(self, tape: Tape, block_size: int) -> None:
        self.tape = tape
        self.block_size = block_size
        self.chunk = block_size * max(1, _CHUNK // block_size)  # fixed mode: many blocks a write
        self.buf = bytearray()
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.buf += data
        while len(self.buf) >= self.chunk:
            self._emit(bytes(self.buf[: self.chunk]))
            del self.buf[: self.chunk]
        return len(data)

    def _emit(self, data: bytes) -> None:
        self.tape.write_block(data)
        self.sha.update(data)
        self.size += len(data)

    def finish(self) -> tuple[int, str]:
        """Pad the last block with zeros, write it and the filemark; (bytes, sha256)."""
        if self.buf:
            self._emit(bytes(self.buf.ljust(padded(len(self.buf), self.block_size), b"\0")))
            self.buf.clear()
        self.tape.write_filemark()
        return self.size, self.sha.hexdigest()


class _Session:
    """One OBDR write onto a positioned tape; `started` once the tape has been written to."""

    def __init__(self, tape: Tape, block_size: int, compress_data: bool, *, drive: bool) -> None:
        self.tape = tape
        self.drive = drive  # a real drive is rewound first and last; an image is written once
        self.block_size = block_size
        self.compress_data = compress_data
        self.started = False
        self.notes: list[str] = []
        self.files: list[TapeFileReport] = []

    def _compression(self, on: bool) -> bool | None:
        try:
            self.tape.set_compression(on)
        except TapeError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTTY, errno.EIO):
                raise
            self.notes.append(f"the drive took no compression setting ({exc.message})")
            return None
        return on

    def _file(self, role: Literal["header", "iso", "data"], block_size: int, compression: bool | None,
              fill: Callable[[_BlockSink], object]) -> TapeFileReport:
        self.tape.set_block_size(block_size)
        sink = _BlockSink(self.tape, block_size)
        self.started = True
        fill(sink)
        size, sha = sink.finish()
        report = TapeFileReport(len(self.files), role, size, size // block_size, block_size, compression, sha)
        self.files.append(report)
        return report

    def run(self, iso: Path, iso_bytes: int, plan: ArchivePlan | None) -> None:
        if self.drive:
            self.tape.rewind()
        # Ask for every block size before writing: a drive that refuses one (EINVAL) fails
        # here, with the tape as it was.
        for size in (self.block_size, OBDR_ISO_BLOCK, OBDR_HEADER_BLOCK):
            self.tape.set_block_size(size)
        boot_compression = self._compression(False)
        label = ObdrLabel(iso_bytes, plan.size if plan else None, self.block_size if plan else None)
        self._file("header", OBDR_HEADER_BLOCK, boot_compression, lambda sink: sink.write(obdr_header(label)))
        self._file("iso", OBDR_ISO_BLOCK, boot_compression, lambda sink: _copy(iso, sink))
        if plan is not None:
            data_compression = self._compression(self.compress_data)
            self._file("data", self.block_size, data_compression, lambda sink: _write_plan(plan, sink))
        if self.drive:
            self.tape.rewind()


def _copy(path: Path, sink: _BlockSink) -> None:
    """The ISO into the sink; only errors reading the ISO are the ISO's (a full disk under
    a tape image is the target's, reported by the caller)."""
    def unreadable(exc: OSError) -> ComposeError:
        return ComposeError(f"cannot read the boot ISO {path}: {exc.strerror}", "rebuild the ISO")

    try:
        f = open(path, "rb")
    except OSError as exc:
        raise unreadable(exc) from exc
    with f:
        while True:
            try:
                chunk = f.read(_CHUNK)
            except OSError as exc:
                raise unreadable(exc) from exc
            if not chunk:
                break
            sink.write(chunk)


def _write_plan(plan: ArchivePlan, sink: _BlockSink) -> None:
    write_archive(plan, sink)


def _invalidate(tape: Tape) -> str:
    """Best effort: a filemark at the beginning, so the tape holds one empty file and nothing
    that boots or restores. Returns what happened, for the hint."""
    try:
        tape.rewind()
        with contextlib.suppress(TapeError):
            tape.set_block_size(OBDR_HEADER_BLOCK)
        tape.write_filemark()
        tape.rewind()
    except TapeError as exc:
        return f"marking the tape unusable failed too ({exc.message}): do not use it to restore"
    return "the tape was marked unusable (a filemark at its start)"


def _report(target: Path, kind: Literal["device", "image"], session: _Session,
            plan: ArchivePlan | None) -> ObdrReport:
    by_role = {f.role: f for f in session.files}
    data = by_role.get("data")
    return ObdrReport(target, kind, tuple(session.files), by_role["iso"].sha256,
                      data.sha256 if data else None, plan.size if plan else None, tuple(session.notes))


def _write_device(tape: Tape, session: _Session, iso: Path, iso_bytes: int, plan: ArchivePlan | None) -> None:
    try:
        session.run(iso, iso_bytes, plan)
    except BaseException as exc:
        done = _invalidate(tape) if session.started else "nothing was written to the tape"
        if isinstance(exc, TapeError | ComposeError):
            stage = f" (tape file {len(session.files)})" if session.started else ""
            raise ComposeError(f"writing the OBDR tape failed{stage}: {exc.message}",
                               f"{exc.hint}; {done}" if exc.hint else done) from exc
        raise
    finally:
        with contextlib.suppress(TapeError):
            tape.close()


def _write_image(target: Path, iso: Path, iso_bytes: int, plan: ArchivePlan | None, *,
                 block_size: int, compress_data: bool) -> _Session:
    """Build the image in a temp sibling and rename it into place: until the rename nothing
    at `target` looks like a tape image, and a failure leaves nothing behind. The rename
    replaces an empty directory, never a full one (no `replace`)."""
    with atomic_directory(target) as tmp:
        try:
            with TapeImageDir.create(tmp) as tape:
                session = _Session(tape, block_size, compress_data, drive=False)
                session.run(iso, iso_bytes, plan)
        except TapeError as exc:
            raise ComposeError(f"writing the tape image {target} failed: {exc.message}", exc.hint) from exc
    return session


def check_target(target: Path) -> Literal["device", "image"]:
    """What `target` is: a tape drive, or a new (or empty) directory for a tape image;
    ComposeError for anything else, before a long build or capture."""
    target = Path(target)
    if target.is_dir():
        if any(target.iterdir()):
            raise ComposeError(f"{target} is not empty",
                               "give a new or empty directory: a tape image never goes over other files")
        return "image"
    if target.exists():
        if not stat.S_ISCHR(os.stat(target).st_mode):
            raise ComposeError(f"{target} is neither a tape device nor a directory",
                               "give a tape device such as /dev/nst0, or a new directory for a tape image")
        return "device"
    if target.parts[:2] == ("/", "dev"):
        raise ComposeError(f"no tape drive at {target}",
                           "check the name (ls /dev/nst*) and that the st module is loaded")
    return "image"


def write_obdr(target: Path, iso: Path, data: Path | None, *, block_size: int = DEFAULT_DATA_BLOCK_SIZE,
               capacity: int | None = None, compress_data: bool = True,
               open_device: Callable[[Path], Tape] = open_st_device) -> ObdrReport:
    """Write an OBDR tape to `target`: a tape character device (checked: st, major 9), or a
    directory path (new or empty) that becomes a tape image. `data` is a directory archived as
    tape file 2, or None for a boot-only tape. Everything is checked (ISO, block size, data
    readable, capacity) before the first byte is written."""
    target = Path(target)
    if target.is_symlink() and target.is_dir():
        target = target.resolve()  # the rename at the end would replace the link, not fill its directory
    if block_size <= 0 or block_size % OBDR_HEADER_BLOCK:
        raise ComposeError(f"bad data block size {block_size}", "give a multiple of 512, e.g. 65536")
    iso_bytes = check_iso(iso)
    plan = plan_archive(data) if data is not None else None
    data_bytes = padded(plan.size, block_size) if plan else 0
    check_tape_capacity(iso_bytes, data, data_bytes, capacity)

    kind = check_target(target)
    if kind == "image":
        session = _write_image(target, iso, iso_bytes, plan, block_size=block_size,
                               compress_data=compress_data)
        return _report(target, kind, session, plan)
    tape = open_device(target)
    session = _Session(tape, block_size, compress_data, drive=True)
    _write_device(tape, session, iso, iso_bytes, plan)
    return _report(target, kind, session, plan)


def obdr_image_iso(image: Path) -> Path:
    """The ISO inside an OBDR tape-image directory (tape file 1), for `ls` and for booting it;
    ComposeError if `image` is not a finished OBDR image."""
    if not is_tape_image(image):
        raise ComposeError(f"{image} is not a tape image (no tape.json)",
                           "give a directory written by `compose-initrd obdr -o DIR`")
    try:
        tape = TapeImageDir.open(image)
    except TapeError as exc:
        raise ComposeError(exc.message, exc.hint) from exc
    files = tape.files
    sizes = [f["block_size"] for f in files[:2]]
    if sizes != [OBDR_HEADER_BLOCK, OBDR_ISO_BLOCK]:
        raise ComposeError(f"{image} is a tape image but not an OBDR tape",
                           "an OBDR tape has a 512-byte-block header file, then the ISO in 2048-byte blocks")
    return tape.file_path(1)


def read_obdr_label(image: Path) -> ObdrLabel | None:
    """Our label from the header of an OBDR tape-image directory (None: another writer's)."""
    obdr_image_iso(image)  # checks it is one
    return parse_obdr_label(TapeImageDir.open(image).file_path(0).read_bytes())


def read_obdr_iso(target: Path, *, open_device: Callable[[Path], Tape] | None = None) -> bytes:
    """The boot ISO (tape file 1) of an OBDR tape-image directory or of the tape in a drive,
    after checking tape file 0 is an OBDR header (twenty 512-byte blocks)."""
    target = Path(target)
    if target.is_dir():
        return obdr_image_iso(target).read_bytes()
    tape = (open_device or (lambda path: open_st_device(path, write=False)))(target)
    try:
        header = [len(block) for block in read_tape_file(tape, 0)]
        if header != [OBDR_HEADER_BLOCK] * OBDR_HEADER_BLOCKS:
            raise ComposeError(f"{target}: tape file 0 is not an OBDR header",
                               "an OBDR tape starts with twenty 512-byte blocks (compose-initrd obdr)")
        return b"".join(read_tape_file(tape, 1))
    except TapeError as exc:
        raise ComposeError(f"reading the tape in {target} failed: {exc.message}", exc.hint) from exc
    finally:
        with contextlib.suppress(TapeError):
            tape.close()
