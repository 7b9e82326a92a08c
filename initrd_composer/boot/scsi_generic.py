"""SCSI commands from user space: the SG_IO ioctl (Linux sg v3 interface) and sense data.

SG_IO takes a `sg_io_hdr_t` (<scsi/sg.h>) holding pointers to the CDB, the data buffer and
the sense buffer; it works on /dev/sgN and on the upper drivers' nodes (/dev/srN, /dev/nstN).
The header is packed here with `struct` at the C layout (88 bytes on 64-bit, checked against
the C header by the tests); the buffers are ctypes arrays so their addresses can go into it.
Everything but `sg_io` itself is pure: tests drive it with a fake ioctl.

Sense data is decoded in both formats (fixed 70h/71h, descriptor 72h/73h) with sg3_utils'
words for the sense keys and the additional sense codes an OBDR switch or a tape meets, so
a log line reads like `sg_wr_mode -v` prints it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

SG_IO = 0x2285
SG_DXFER_NONE = -1
SG_DXFER_TO_DEV = -2
SG_DXFER_FROM_DEV = -3
SG_INTERFACE_ID = ord("S")
SENSE_MAX = 64  # sg3_utils asks for 64 bytes (SENSE_BUFF_LEN)
DEFAULT_TIMEOUT_MS = 60_000  # sg3_utils' DEF_PT_TIMEOUT

# sg_io_hdr_t: interface_id, dxfer_direction (int); cmd_len, mx_sb_len (uchar); iovec_count
# (ushort); dxfer_len (uint); dxferp, cmdp, sbp (pointers); timeout, flags (uint); pack_id (int);
# usr_ptr (pointer); status, masked_status, msg_status, sb_len_wr (uchar); host_status,
# driver_status (ushort); resid (int); duration, info (uint); "0P" pads the end as C does.
SG_IO_HDR = struct.Struct("@iiBBHIPPPIIiPBBBBHHiII0P")

GOOD = 0x00
CHECK_CONDITION = 0x02
DRIVER_SENSE = 0x08

SENSE_KEYS = (
    "No Sense", "Recovered Error", "Not Ready", "Medium Error", "Hardware Error", "Illegal Request",
    "Unit Attention", "Data Protect", "Blank Check", "Vendor specific(9)", "Copy Aborted",
    "Aborted Command", "Equal", "Volume Overflow", "Miscompare", "Completed",
)  # fmt: skip
NOT_READY = 0x2
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6

# sg3_utils' lib/sg_lib_data.c wording, for the codes tape drives and MODE SELECT give.
ADDITIONAL_SENSE = {
    (0x00, 0x00): "No additional sense information",
    (0x00, 0x01): "Filemark detected",
    (0x00, 0x02): "End-of-partition/medium detected",
    (0x00, 0x04): "Beginning-of-partition/medium detected",
    (0x00, 0x05): "End-of-data detected",
    (0x04, 0x00): "Logical unit not ready, cause not reportable",
    (0x04, 0x01): "Logical unit is in process of becoming ready",
    (0x11, 0x00): "Unrecovered read error",
    (0x14, 0x00): "Recorded entity not found",
    (0x1A, 0x00): "Parameter list length error",
    (0x20, 0x00): "Invalid command operation code",
    (0x24, 0x00): "Invalid field in cdb",
    (0x25, 0x00): "Logical unit not supported",
    (0x26, 0x00): "Invalid field in parameter list",
    (0x26, 0x01): "Parameter not supported",
    (0x26, 0x02): "Parameter value invalid",
    (0x28, 0x00): "Not ready to ready change, medium may have changed",
    (0x29, 0x00): "Power on, reset, or bus device reset occurred",
    (0x2A, 0x01): "Mode parameters changed",
    (0x30, 0x00): "Incompatible medium installed",
    (0x3A, 0x00): "Medium not present",
    (0x3B, 0x00): "Sequential positioning error",
    (0x53, 0x02): "Medium removal prevented",
}


def hex_bytes(data: bytes) -> str:
    """`5a 00 3e`: how sg3_utils prints CDBs and parameter lists."""
    return " ".join(f"{b:02x}" for b in data)


@dataclass(frozen=True)
class Sense:
    """Decoded sense data: key, additional sense code and qualifier, and their words."""

    key: int
    asc: int
    ascq: int
    raw: bytes
    deferred: bool = False

    @property
    def key_name(self) -> str:
        return SENSE_KEYS[self.key & 0xF]

    @property
    def asc_text(self) -> str:
        text = ADDITIONAL_SENSE.get((self.asc, self.ascq))
        return text or f"ASC=0x{self.asc:02x} ASCQ=0x{self.ascq:02x}"

    def describe(self) -> str:
        """`Illegal Request: Invalid field in parameter list (26h/00h)`."""
        return f"{self.key_name}: {self.asc_text} ({self.asc:02x}h/{self.ascq:02x}h)"

    def as_dict(self) -> dict[str, object]:
        return {"key": self.key, "key_name": self.key_name, "asc": self.asc, "ascq": self.ascq,
                "text": self.describe(), "raw": hex_bytes(self.raw)}  # fmt: skip


def decode_sense(raw: bytes) -> Sense | None:
    """Sense data in fixed (70h/71h) or descriptor (72h/73h) format; None if neither."""
    if len(raw) < 2:
        return None
    code = raw[0] & 0x7F
    if code in (0x70, 0x71):
        key = raw[2] & 0xF if len(raw) > 2 else 0
        asc = raw[12] if len(raw) > 12 else 0
        ascq = raw[13] if len(raw) > 13 else 0
        return Sense(key, asc, ascq, bytes(raw), deferred=code == 0x71)
    if code in (0x72, 0x73):
        key = raw[1] & 0xF
        asc = raw[2] if len(raw) > 2 else 0
        ascq = raw[3] if len(raw) > 3 else 0
        return Sense(key, asc, ascq, bytes(raw), deferred=code == 0x73)
    return None


@dataclass(frozen=True)
class SgResult:
    """What one SG_IO came back with."""

    status: int  # SCSI status byte (0 GOOD, 2 CHECK CONDITION)
    host_status: int  # the HBA's view (0: no transport error)
    driver_status: int
    data: bytes  # FROM_DEV: the bytes received (dxfer_len - resid); else b""
    sense: Sense | None
    resid: int
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status == GOOD and self.host_status == 0 and (self.driver_status & ~DRIVER_SENSE) == 0

    def describe(self) -> str:
        if self.ok:
            return "GOOD"
        if self.sense is not None:
            return f"CHECK CONDITION, {self.sense.describe()}"
        if self.host_status:
            return f"host status 0x{self.host_status:02x} (the HBA or transport failed)"
        return f"status 0x{self.status:02x}, driver status 0x{self.driver_status:02x}"


def pack_sg_io_hdr(*, direction: int, cdb_addr: int, cdb_len: int, data_addr: int, data_len: int,
                   sense_addr: int, sense_len: int, timeout_ms: int) -> bytes:
    """A sg_io_hdr_t for one command (no scatter-gather, no flags)."""
    return SG_IO_HDR.pack(SG_INTERFACE_ID, direction, cdb_len, sense_len, 0, data_len, data_addr, cdb_addr,
                          sense_addr, timeout_ms, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # fmt: skip


@dataclass(frozen=True)
class SgIoOut:
    """The output fields of a sg_io_hdr_t after the ioctl."""

    status: int
    masked_status: int
    msg_status: int
    sb_len_wr: int
    host_status: int
    driver_status: int
    resid: int
    duration: int
    info: int


def unpack_sg_io_hdr(raw: bytes) -> SgIoOut:
    fields = SG_IO_HDR.unpack(raw)
    return SgIoOut(*fields[13:22])


Ioctl = Callable[[int, int, bytearray], object]  # fcntl.ioctl(fd, request, buffer) mutating buffer


def _ioctl(fd: int, request: int, buffer: bytearray) -> object:
    return fcntl.ioctl(fd, request, buffer, True)


def sg_io(fd: int, cdb: bytes, *, data_out: bytes | None = None, data_in: int = 0,
          timeout_ms: int = DEFAULT_TIMEOUT_MS, ioctl: Ioctl = _ioctl) -> SgResult:
    """Send one CDB; `data_out` goes to the device, or `data_in` bytes are asked from it.
    OSError from the ioctl (EPERM without CAP_SYS_RAWIO, ENOTTY on a node without SG_IO)
    propagates."""
    cdb_buf = ctypes.create_string_buffer(bytes(cdb), len(cdb))
    sense_buf = ctypes.create_string_buffer(SENSE_MAX)
    if data_out is not None:
        direction, length = SG_DXFER_TO_DEV, len(data_out)
        data_buf = ctypes.create_string_buffer(bytes(data_out), max(1, length))
    elif data_in:
        direction, length = SG_DXFER_FROM_DEV, data_in
        data_buf = ctypes.create_string_buffer(length)
    else:
        direction, length = SG_DXFER_NONE, 0
        data_buf = ctypes.create_string_buffer(1)
    header = bytearray(pack_sg_io_hdr(
        direction=direction, cdb_addr=ctypes.addressof(cdb_buf), cdb_len=len(cdb),
        data_addr=ctypes.addressof(data_buf) if length else 0, data_len=length,
        sense_addr=ctypes.addressof(sense_buf), sense_len=SENSE_MAX, timeout_ms=timeout_ms))
    ioctl(fd, SG_IO, header)
    out = unpack_sg_io_hdr(bytes(header))
    received = b""
    if direction == SG_DXFER_FROM_DEV:
        received = data_buf.raw[: max(0, length - max(0, out.resid))]
    sense = decode_sense(sense_buf.raw[: out.sb_len_wr]) if out.sb_len_wr else None
    return SgResult(out.status, out.host_status, out.driver_status, received, sense, out.resid, out.duration)


class SgDevice:
    """An open SCSI node for SG_IO: read-write and non-blocking, as sg3_utils opens it (an
    sr or st node would otherwise wait for a medium)."""

    def __init__(self, path: str, *, opener: Callable[[str, int], int] = os.open) -> None:
        self.path = path
        self.fd = opener(path, os.O_RDWR | os.O_NONBLOCK)

    def command(self, cdb: bytes, *, data_out: bytes | None = None, data_in: int = 0,
                timeout_ms: int = DEFAULT_TIMEOUT_MS) -> SgResult:
        return sg_io(self.fd, cdb, data_out=data_out, data_in=data_in, timeout_ms=timeout_ms)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> SgDevice:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def errno_text(err: int | None) -> str:
    """`EPERM (Operation not permitted)`, for logs and reports."""
    if not err:
        return "unknown error"
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"
