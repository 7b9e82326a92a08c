"""Take an HP OBDR drive out of CD-ROM emulation: the MODE SENSE + MODE SELECT exchange of
sg3_utils' `sg_wr_mode -f -p 3eh -c 3e,2,0,0 DEVICE`, the command ReaR and HP's own tools use.

An HP drive that booted a machine from an OBDR tape shows itself as a CD-ROM until bit 0
(CDmode) of its vendor mode page 3Eh is cleared; it then reloads the tape at BOP and, once
the SCSI device is removed and scanned again, appears as a tape (`boot.sources.tape_devices`
does that part).

What `sg_wr_mode` sends with `--force` (src/sg_wr_mode.c), reproduced byte for byte:
1. MODE SENSE(10) of page 3Eh, current values, 2048 bytes asked (MODE SENSE(6): 252);
2. the parameter list is that response cut to the page offset (header and block descriptors,
   kept as the device gave them) plus the new page `3e 02 00 00`; the mode data length bytes
   are zeroed (reserved in MODE SELECT) and, for a disk (type 0), the DPOFUA bit too;
3. MODE SELECT(10) with PF set, SP clear (MODE SELECT(6) after a 6-byte sense).
sg_wr_mode first sends an INQUIRY for the peripheral type; we take it from sysfs. Unlike
sg_wr_mode we retry a command that meets a UNIT ATTENTION (a drive reports its power-on or a
reload once, to the first command) and fall back to the 6-byte pair when the drive does not
know a 10-byte command (sg_wr_mode's own hint: `--len=6`); tgt's SSC drive answers MODE
SENSE(10) but not MODE SELECT(10), so the fallback is taken after either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from initrd_composer.boot.scsi_generic import (
    CHECK_CONDITION,
    ILLEGAL_REQUEST,
    UNIT_ATTENTION,
    SgResult,
    hex_bytes,
)

OBDR_PAGE = 0x3E
OBDR_CONTENTS = bytes([0x3E, 0x02, 0x00, 0x00])  # -c 3e,2,0,0: page 3Eh, 2 bytes, CDmode clear
MODE_SENSE_10_ALLOC = 2048  # sg_wr_mode's MX_ALLOC_LEN
MODE_SENSE_6_ALLOC = 252  # sg_wr_mode's SHORT_ALLOC_LEN
UA_RETRIES = 3
INVALID_OPCODE = 0x20


def mode_sense_cdb(page: int, subpage: int = 0, *, six: bool = False, dbd: bool = False,
                   pc: int = 0) -> bytes:
    """MODE SENSE(6) 1Ah / (10) 5Ah for `page`; pc 0 = current values."""
    page_byte = ((pc << 6) & 0xC0) | (page & 0x3F)
    if six:
        return bytes([0x1A, 0x08 if dbd else 0, page_byte, subpage & 0xFF, MODE_SENSE_6_ALLOC, 0])
    alloc = MODE_SENSE_10_ALLOC
    return bytes([0x5A, 0x08 if dbd else 0, page_byte, subpage & 0xFF, 0, 0, 0, alloc >> 8, alloc & 0xFF, 0])


def mode_select_cdb(length: int, *, six: bool = False, pf: bool = True, sp: bool = False) -> bytes:
    """MODE SELECT(6) 15h / (10) 55h of a `length`-byte parameter list."""
    flags = (0x10 if pf else 0) | (0x01 if sp else 0)
    if six:
        if length > 0xFF:
            raise ValueError(f"a MODE SELECT(6) parameter list is at most 255 bytes, not {length}")
        return bytes([0x15, flags, 0, 0, length, 0])
    return bytes([0x55, flags, 0, 0, 0, 0, 0, length >> 8, length & 0xFF, 0])


def mode_page_offset(response: bytes, *, six: bool) -> int:
    """Where the first mode page starts in a MODE SENSE response (sg_mode_page_offset)."""
    header = 4 if six else 8
    if len(response) < header:
        raise ValueError(f"MODE SENSE({6 if six else 10}) response of {len(response)} bytes is too short")
    if six:
        calc_len, bd_len = response[0] + 1, response[3]
    else:
        calc_len = int.from_bytes(response[0:2], "big") + 2
        bd_len = int.from_bytes(response[6:8], "big")
    offset = header + bd_len
    if offset + 2 > calc_len:
        raise ValueError(f"MODE SENSE response too short for a page: offset={offset} "
                         f"calc_len={calc_len} bd_len={bd_len}")
    return offset


def mode_data_length(response: bytes, cdb: bytes) -> int:
    """How much of a MODE SENSE response is mode data (its header says), else all of it."""
    if cdb[:1] == b"\x1a" and response:
        return min(len(response), response[0] + 1)
    if cdb[:1] == b"\x5a" and len(response) >= 2:
        return min(len(response), int.from_bytes(response[0:2], "big") + 2)
    return len(response)


def mode_select_parameters(response: bytes, contents: bytes, *, six: bool, pdt: int) -> bytes:
    """The MODE SELECT parameter list sg_wr_mode --force builds from a MODE SENSE `response`
    (as received; padded with zeros to the allocation length, as its buffer is)."""
    alloc = MODE_SENSE_6_ALLOC if six else MODE_SENSE_10_ALLOC
    ref = bytearray(response[:alloc].ljust(alloc, b"\0"))
    offset = mode_page_offset(bytes(ref), six=six)
    md_len = (ref[0] + 1) if six else int.from_bytes(ref[0:2], "big") + 2
    if md_len > alloc:
        raise ValueError(f"mode data length={md_len} exceeds allocation length={alloc}")
    if len(contents) < 2:
        raise ValueError(f"contents length={len(contents)} too short")
    ref[0] = 0  # mode data length: reserved in MODE SELECT
    if not six:
        ref[1] = 0
    if pdt == 0:  # disks: DPOFUA is reserved in MODE SELECT
        ref[2 if six else 3] &= 0xEF
    md_len = offset + len(contents)  # --force: the contents decide the length
    ref[offset:md_len] = contents
    return bytes(ref[:md_len])


@dataclass(frozen=True)
class Exchange:
    """One command as sent and how the device answered (or the OS error)."""

    command: str  # "mode sense(10)"
    cdb: bytes
    parameters: bytes | None
    result: SgResult | None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"command": self.command, "cdb": hex_bytes(self.cdb)}
        if self.parameters is not None:
            out["parameters"] = hex_bytes(self.parameters)
        if self.result is not None:
            out["status"] = self.result.describe()
            out["sense"] = self.result.sense.as_dict() if self.result.sense else None
            if self.result.ok and self.result.data:
                out["response"] = hex_bytes(self.result.data[: mode_data_length(self.result.data, self.cdb)])
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class SwitchResult:
    """What happened on one device. outcome: switched (MODE SELECT accepted) | refused (CHECK
    CONDITION to MODE SENSE or MODE SELECT) | failed (no answer: OS or transport error, or an
    unusable response)."""

    device: str
    outcome: str = "failed"
    detail: str = ""
    page_before: bytes | None = None
    six: bool = False
    exchanges: list[Exchange] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "outcome": self.outcome, "detail": self.detail,
                "page_before": hex_bytes(self.page_before) if self.page_before is not None else None,
                "cdb_length": 6 if self.six else 10,
                "exchanges": [e.as_dict() for e in self.exchanges]}  # fmt: skip


# (cdb, bytes to send or None, bytes to receive) -> the result; OSError when the ioctl fails
Send = Callable[[bytes, "bytes | None", int], SgResult]


def _issue(send: Send, out: SwitchResult, command: str, cdb: bytes, *, data_out: bytes | None = None,
           data_in: int = 0) -> SgResult | None:
    """Send, retrying what meets a UNIT ATTENTION; every attempt is recorded."""
    for _ in range(UA_RETRIES + 1):
        try:
            result = send(cdb, data_out, data_in)
        except OSError as exc:
            out.exchanges.append(Exchange(command, cdb, data_out, None, f"{exc.strerror or exc}"))
            out.outcome, out.detail = "failed", f"{command}: {exc.strerror or exc}"
            return None
        out.exchanges.append(Exchange(command, cdb, data_out, result))
        if result.sense is None or result.sense.key != UNIT_ATTENTION:
            return result
    return result


def _invalid_opcode(result: SgResult) -> bool:
    sense = result.sense
    return (result.status == CHECK_CONDITION and sense is not None and sense.key == ILLEGAL_REQUEST
            and sense.asc == INVALID_OPCODE)  # fmt: skip


def leave_cdrom_emulation(send: Send, *, device: str, pdt: int) -> SwitchResult:
    """The OBDR switch on one device: 10-byte commands, 6-byte ones if those are unknown."""
    out = SwitchResult(device)
    for six in (False, True):
        length = 6 if six else 10
        out.six = six
        alloc = MODE_SENSE_6_ALLOC if six else MODE_SENSE_10_ALLOC
        sensed = _issue(send, out, f"mode sense({length})", mode_sense_cdb(OBDR_PAGE, six=six), data_in=alloc)
        if sensed is None:
            return out
        if not sensed.ok:
            if not six and _invalid_opcode(sensed):
                continue
            out.outcome, out.detail = "refused", f"MODE SENSE({length}) of page 3Eh: {sensed.describe()}"
            return out
        try:
            params = mode_select_parameters(sensed.data, OBDR_CONTENTS, six=six, pdt=pdt)
        except ValueError as exc:
            out.outcome, out.detail = "failed", f"MODE SENSE({length}) of page 3Eh: {exc}"
            return out
        offset = mode_page_offset(sensed.data.ljust(alloc, b"\0"), six=six)
        page_len = sensed.data[offset + 1] + 2 if len(sensed.data) > offset + 1 else 0
        out.page_before = sensed.data[offset:offset + page_len]
        selected = _issue(send, out, f"mode select({length})", mode_select_cdb(len(params), six=six),
                          data_out=params)
        if selected is None:
            return out
        if not six and _invalid_opcode(selected):
            continue  # MODE SENSE(10) but no MODE SELECT(10): tgt's SSC drive is one such
        if selected.ok:
            out.outcome, out.detail = "switched", f"MODE SELECT({length}) of page 3Eh accepted"
        else:
            out.outcome, out.detail = "refused", f"MODE SELECT({length}) of page 3Eh: {selected.describe()}"
        return out
    return out
