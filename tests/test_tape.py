"""The tape layer: ioctl numbers against the C headers, DeviceTape against a drive model that
decodes the real ioctl structs and enforces st's block semantics, and tape-image directories
(which must behave like the drive: same reads, same positioning)."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from initrd_composer.boot import tape as tape_mod
from initrd_composer.boot.tape import (
    DeviceTape,
    ObdrLabel,
    Tape,
    TapeError,
    TapeImageDir,
    copy_tape_file,
    detect_block_size,
    is_tape_image,
    obdr_header,
    parse_obdr_label,
    read_tape_file,
)
from initrd_composer.runner import run

# Written out from <linux/mtio.h> independently of the module, so a wrong constant there
# makes the model refuse the call.
MTIOCTOP_X86_64 = 0x40086D01
MTIOCGET_X86_64 = 0x80306D02
OPS = {1: "fsf", 2: "bsf", 5: "weof", 6: "rew", 20: "setblk", 32: "compression"}


@dataclass
class Record:
    data: bytes | None  # None: a filemark
    compression: bool = False


class DriveModel:
    """A SCSI tape drive as the st driver shows it: records and filemarks on a tape that a
    write truncates at the head's position; fixed-block mode (a write must be whole blocks,
    each block one record) and variable mode (one write, one record); reads return one record
    (variable) or whole blocks (fixed), b"" at a filemark, EIO at the end of data."""

    def __init__(self, *, refuse: frozenset[int] = frozenset(), capacity: int | None = None,
                 eio_after: int | None = None, compression_control: bool = True) -> None:
        self.records: list[Record] = []
        self.pos = 0
        self.block_size = 0
        self.compression = True  # drives power up compressing
        self.refuse = refuse
        self.capacity = capacity
        self.eio_after = eio_after
        self.compression_control = compression_control
        self.ops: list[tuple[str, int]] = []
        self.written = 0
        self.last_was_write = False
        self.open_flags: int | None = None

    # -- the syscalls -----------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        self.open_flags = flags
        return 3

    def close(self, fd: int) -> None:
        assert fd == 3
        if self.last_was_write:  # st ends a written file with a filemark on close
            self._put(Record(None))
        self.last_was_write = False

    def _put(self, record: Record) -> None:
        del self.records[self.pos:]
        self.records.append(record)
        self.pos += 1

    def _writable(self) -> None:
        if self.open_flags is not None and self.open_flags & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def write(self, fd: int, data: bytes) -> int:
        assert fd == 3
        self._writable()
        if self.eio_after is not None and self.written + len(data) > self.eio_after:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        if self.block_size and len(data) % self.block_size:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        size = self.block_size or len(data)
        for start in range(0, len(data), size):
            used = sum(len(r.data or b"") for r in self.records[: self.pos])
            if self.capacity is not None and used + size > self.capacity:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._put(Record(data[start:start + size], self.compression))
        self.written += len(data)
        self.last_was_write = True
        return len(data)

    def read(self, fd: int, size: int) -> bytes:
        assert fd == 3
        self.last_was_write = False
        if self.pos >= len(self.records):
            raise OSError(errno.EIO, "blank check: end of data")
        first = self.records[self.pos]
        if first.data is None:
            self.pos += 1
            return b""
        if not self.block_size:
            self.pos += 1
            if len(first.data) > size:
                raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
            return first.data
        if size % self.block_size:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        out = b""
        while len(out) < size and self.pos < len(self.records):
            data = self.records[self.pos].data
            if data is None:
                break
            if len(data) != self.block_size:  # incorrect length indicator
                raise OSError(errno.EIO, "record length differs from the block size")
            out += data
            self.pos += 1
        return out

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        assert fd == 3
        self.last_was_write = False
        if request == MTIOCGET_X86_64:
            assert len(arg) == 48
            fileno = sum(1 for r in self.records[: self.pos] if r.data is None)
            gstat = (0x40000000 if self.pos == 0 else 0) | 0x01000000
            return struct.pack("<5q2i", 0x72, 0, self.block_size, gstat, 0, fileno, 0)
        if request != MTIOCTOP_X86_64:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        assert len(arg) == 8  # struct mtop: short, 2 bytes padding, int
        op, count = struct.unpack("<h2xi", arg)
        self.ops.append((OPS.get(op, str(op)), count))
        if op == 20:
            if count in self.refuse:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            self.block_size = count
        elif op == 32:
            if not self.compression_control:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            self.compression = bool(count)
        elif op == 6:
            self.pos = 0
        elif op == 5:
            self._writable()
            for _ in range(count):
                self._put(Record(None))
        elif op == 1:
            for _ in range(count):
                while self.pos < len(self.records) and self.records[self.pos].data is not None:
                    self.pos += 1
                if self.pos >= len(self.records):
                    raise OSError(errno.EIO, "end of data")
                self.pos += 1
        elif op == 2:
            for _ in range(count):
                marks = [i for i in range(self.pos) if self.records[i].data is None]
                if not marks:
                    raise OSError(errno.EIO, "beginning of tape")
                self.pos = marks[-1]
        else:
            raise OSError(errno.EINVAL, f"op {op} not modelled")
        return arg

    # -- what the tests look at ----------------------------------------------------------------
    def files(self) -> list[list[Record]]:
        """The records between filemarks; a file after the last filemark only if unterminated."""
        out: list[list[Record]] = [[]]
        for record in self.records:
            if record.data is None:
                out.append([])
            else:
                out[-1].append(record)
        if not out[-1]:
            out.pop()
        return out

    def filemarks(self) -> list[int]:
        return [i for i, r in enumerate(self.records) if r.data is None]


def device(model: DriveModel, *, write: bool = True) -> DeviceTape:
    return DeviceTape("/dev/nst0", write=write, syscalls=model)


def test_constants_match_the_c_headers(tmp_path: Path) -> None:
    src = tmp_path / "mtio.c"
    src.write_text(
        "#include <stdio.h>\n#include <sys/mtio.h>\n"
        "int main(void){printf(\"%lu %lu %zu %zu %d %d %d %d %d %d\\n\","
        "(unsigned long)MTIOCTOP,(unsigned long)MTIOCGET,sizeof(struct mtop),sizeof(struct mtget),"
        "MTFSF,MTBSF,MTWEOF,MTREW,MTSETBLK,MTCOMPRESSION);return 0;}\n")
    run(["gcc", "-o", tmp_path / "mtio", src])
    values = [int(v) for v in run([tmp_path / "mtio"]).stdout.split()]
    assert values == [tape_mod.MTIOCTOP, tape_mod.MTIOCGET, tape_mod.MTOP.size, tape_mod.MTGET.size,
                      tape_mod.MTFSF, tape_mod.MTBSF, tape_mod.MTWEOF, tape_mod.MTREW,
                      tape_mod.MTSETBLK, tape_mod.MTCOMPRESSION]
    assert (tape_mod.MTIOCTOP, tape_mod.MTIOCGET) == (MTIOCTOP_X86_64, MTIOCGET_X86_64)


def write_sample(tape: Tape) -> list[list[bytes]]:
    """Three files and an empty one: fixed 512, variable records of mixed lengths, fixed 2048
    written several blocks a call. Returns the records as the reader must give them back."""
    fixed = [bytes([i]) * 512 for i in range(20)]
    variable = [b"a" * 700, b"b" * 700, b"c" * 9000, b"d" * 1]
    iso = [bytes([i]) * 2048 for i in range(6)]
    tape.set_compression(False)
    tape.set_block_size(512)
    tape.write_block(b"".join(fixed))
    tape.write_filemark()
    tape.set_block_size(0)
    for record in variable:
        tape.write_block(record)
    tape.write_filemark()
    tape.set_compression(True)
    tape.set_block_size(2048)
    tape.write_block(b"".join(iso[:4]))
    tape.write_block(b"".join(iso[4:]))
    tape.write_filemark()
    tape.write_filemark()
    return [fixed, variable, iso, []]


def test_device_tape_writes_records_and_filemarks_as_st_does() -> None:
    model = DriveModel()
    tape = device(model)
    expected = write_sample(tape)
    tape.close()
    assert model.open_flags == os.O_RDWR
    assert [[r.data for r in f] for f in model.files()] == expected
    assert [{r.compression for r in f} for f in model.files()[:3]] == [{False}, {False}, {True}]
    assert ("setblk", 512) in model.ops and ("compression", 0) in model.ops
    with pytest.raises(TapeError, match="not a whole number of 2048-byte blocks"):
        tape = device(model)
        tape.set_block_size(2048)
        tape.write_block(b"x" * 100)


def test_device_and_image_read_back_the_same(tmp_path: Path) -> None:
    model = DriveModel()
    expected = write_sample(device(model))
    with TapeImageDir.create(tmp_path) as image:
        write_sample(image)
    for tape in (device(model, write=False), TapeImageDir.open(tmp_path)):
        for index, records in enumerate(expected):
            assert list(read_tape_file(tape, index)) == records, (tape.name, index)
        assert detect_block_size(tape, 0) == 512
        assert detect_block_size(tape, 1) == 700
        assert detect_block_size(tape, 3) == 0
        # Positioning: fsf 2 to file 2; bsf 1 to just before file 1's filemark.
        tape.rewind()
        tape.skip_files(2)
        assert tape.read_block() == expected[2][0]
        tape.skip_files(-1)
        assert tape.read_block() == b""  # file 1's filemark
        assert tape.read_block() == expected[2][0]
        tape.rewind()
        tape.skip_files(4)  # past the last filemark: end of data
        with pytest.raises(TapeError) as info:
            tape.read_block()
        assert info.value.errno == errno.EIO


def test_image_manifest_records_block_sizes_and_runs(tmp_path: Path) -> None:
    with TapeImageDir.create(tmp_path) as image:
        write_sample(image)
    manifest = json.loads((tmp_path / "tape.json").read_text())
    files = manifest["files"]
    assert [f["block_size"] for f in files] == [512, 0, 2048, 2048]
    assert files[0]["blocks"] == [[512, 20]]
    assert files[1]["blocks"] == [[700, 2], [9000, 1], [1, 1]]
    assert [f["compression"] for f in files[:3]] == [False, False, True]
    assert [f["bytes"] for f in files] == [10240, 10401, 12288, 0]
    assert (tmp_path / "file-002.bin").read_bytes() == b"".join(bytes([i]) * 2048 for i in range(6))
    out = io.BytesIO()
    info = copy_tape_file(TapeImageDir.open(tmp_path), 1, out)
    assert out.getvalue() == (tmp_path / "file-001.bin").read_bytes()
    assert (info.bytes, info.blocks, info.block_size) == (10401, 4, 700)
    assert info.sha256 == files[1]["sha256"]


def test_interrupted_image_has_no_manifest(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), TapeImageDir.create(tmp_path) as image:
        image.set_block_size(512)
        image.write_block(bytes(1024))
        raise KeyboardInterrupt
    assert (tmp_path / "file-000.bin").exists()
    assert not is_tape_image(tmp_path)
    with pytest.raises(TapeError, match="not a tape image"):
        TapeImageDir.open(tmp_path)


def test_damaged_image_is_refused(tmp_path: Path) -> None:
    with TapeImageDir.create(tmp_path) as image:
        write_sample(image)
    with open(tmp_path / "file-002.bin", "r+b") as f:
        f.truncate(4096)
    with pytest.raises(TapeError, match="manifest says 12288"):
        TapeImageDir.open(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    with pytest.raises(TapeError, match="empty directory"):
        TapeImageDir.create(tmp_path / "other")


@pytest.mark.parametrize(("model", "call", "err", "hint"), [
    (DriveModel(refuse=frozenset({65536})), lambda t: t.set_block_size(65536), errno.EINVAL,
     "refused block size 65536"),
    (DriveModel(capacity=4096), lambda t: t.write_block(bytes(8192)), errno.ENOSPC, "tape is full"),
    (DriveModel(eio_after=0), lambda t: t.write_block(bytes(512)), errno.EIO, "clean the drive"),
    (DriveModel(compression_control=False), lambda t: t.set_compression(False), errno.EINVAL,
     "compression off"),
])
def test_drive_errors_carry_errno_and_hint(model: DriveModel, call: object, err: int, hint: str) -> None:
    tape = device(model)
    with pytest.raises(TapeError) as info:
        call(tape)  # type: ignore[operator]
    assert info.value.errno == err
    assert hint in info.value.hint
    assert info.value.message.startswith("/dev/nst0: ")


def test_open_failure_and_oversized_record() -> None:
    class NoTape(DriveModel):
        def open(self, path: str, flags: int) -> int:
            raise OSError(errno.ENOMEDIUM, os.strerror(errno.ENOMEDIUM))

    with pytest.raises(TapeError, match="cannot open") as info:
        device(NoTape())
    assert "load a cartridge" in info.value.hint
    model = DriveModel()
    tape = device(model)
    tape.write_block(bytes(4096))
    tape.write_filemark()
    with pytest.raises(TapeError) as info:
        list(read_tape_file(tape, 0, max_block=1024))
    assert info.value.errno == errno.ENOMEM
    reader = device(model, write=False)
    with pytest.raises(TapeError) as info:
        reader.write_filemark()
    assert info.value.errno == errno.EBADF


def test_status_decodes_mtget() -> None:
    model = DriveModel()
    tape = device(model)
    tape.set_block_size(2048)
    status = tape.status()
    flags = (status.block_size, status.at_bot, status.online, status.write_protected)
    assert flags == (2048, True, True, False)
    tape.write_block(bytes(2048))
    tape.write_filemark()
    assert tape.status().file_number == 1 and not tape.status().at_bot


def test_obdr_label_round_trip() -> None:
    label = ObdrLabel(iso_bytes=4 * 2048, data_bytes=30720, data_block_size=65536)
    header = obdr_header(label)
    assert len(header) == 10240 and header.endswith(bytes(100))
    assert parse_obdr_label(header) == label
    assert parse_obdr_label(obdr_header(ObdrLabel(2048, None, None))) == ObdrLabel(2048, None, None)
    assert parse_obdr_label(bytes(10240)) is None  # MondoRescue's zeros
    assert parse_obdr_label(b"REAR-000".ljust(10240, b"\0")) is None


def test_close_ends_a_pending_file_like_st(tmp_path: Path) -> None:
    """st writes a filemark when a device is closed after a write; the image does the same."""
    model = DriveModel()
    with TapeImageDir.create(tmp_path) as image:
        for tape in (image, device(model)):
            tape.set_block_size(512)
            tape.write_block(bytes(1024))
            tape.close()
    assert [f["blocks"] for f in TapeImageDir.open(tmp_path).files] == [[[512, 2]]]
    assert model.filemarks() == [2]
