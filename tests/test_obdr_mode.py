"""The OBDR switch against its oracle: what sg3-utils' `sg_wr_mode -vvv -f -p 3eh -c 3e,2,0,0`
printed that it sent to a real device, and what the device answered (tests/data/
sg_wr_mode_tgt.txt: recorded from a real run in a guest, on tgt's tape posing as an HP drive;
how, and the boot test that re-runs it, are in its header). Our CDBs and parameter lists must
equal sg_wr_mode's byte for byte, given the same MODE SENSE response; replaying the device's
answers, the whole exchange must be sg_wr_mode's 10-byte run followed by its 6-byte run."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from initrd_composer.boot import obdr_mode as om
from initrd_composer.boot.scsi_generic import SgResult, decode_sense

FIXTURE = Path(__file__).parent / "data" / "sg_wr_mode_tgt.txt"
_HEX_LINE = re.compile(r"^\s*[0-9a-f]{2}(\s+[0-9a-f]{2})*\s*$")
_CDB = re.compile(r"^\s*(mode (?:sense|select)\((?:6|10)\)) cdb: \[([0-9a-f ]+)\]")


@dataclass
class Command:
    name: str  # "mode sense(10)"
    cdb: bytes
    response: bytes = b""  # MODE SENSE: the bytes printed (its whole buffer)
    parameters: bytes = b""  # MODE SELECT: the parameter list


@dataclass
class Transcript:
    commands: list[Command] = field(default_factory=list)
    sense: bytes = b""  # the raw sense data printed for the failing command
    sense_words: tuple[str, str] = ("", "")  # "Illegal Request", "Invalid field in parameter list"

    def command(self, name: str) -> Command:
        return next(c for c in self.commands if c.name == name)


def _hex(lines: list[str], start: int) -> tuple[bytes, int]:
    out = bytearray()
    i = start
    while i < len(lines) and _HEX_LINE.match(lines[i]):
        out += bytes.fromhex(lines[i].replace(" ", ""))
        i += 1
    return bytes(out), i


def parse_transcript(text: str) -> Transcript:
    """sg_wr_mode -vvv's stderr: the MODE SENSE/SELECT CDBs, the response, the parameter
    list, the sense of the command that failed."""
    out = Transcript()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if match := _CDB.match(line):
            out.commands.append(Command(match[1], bytes.fromhex(match[2].replace(" ", ""))))
        elif re.match(r"^\s*mode sense\((6|10)\): response", line):
            out.commands[-1].response, i = _hex(lines, i + 1)
            continue
        elif re.match(r"^\s*mode select\((6|10)\) parameter list", line):
            out.commands[-1].parameters, i = _hex(lines, i + 1)
            continue
        elif "Sense key:" in line and i + 1 < len(lines) and lines[i + 1].startswith("Additional sense:"):
            out.sense_words = (line.split("Sense key:", 1)[1].strip(),
                               lines[i + 1].split(":", 1)[1].strip())  # fmt: skip
        elif line.strip().startswith("Raw sense data"):
            out.sense, i = _hex(lines, i + 1)
            continue
        i += 1
    return out


def recorded() -> dict[str, Transcript]:
    parts = re.split(r"^=== (\d+)\n", FIXTURE.read_text(), flags=re.M)
    return {parts[i]: parse_transcript(parts[i + 1]) for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("six", [False, True], ids=["10", "6"])
def test_cdbs_and_parameter_list_equal_sg_wr_modes(six: bool) -> None:
    t = recorded()["6" if six else "10"]
    n = 6 if six else 10
    sense, select = t.command(f"mode sense({n})"), t.command(f"mode select({n})")
    assert om.mode_sense_cdb(om.OBDR_PAGE, six=six) == sense.cdb
    params = om.mode_select_parameters(sense.response, om.OBDR_CONTENTS, six=six, pdt=1)
    assert params == select.parameters
    assert om.mode_select_cdb(len(params), six=six) == select.cdb
    # what it is, in words: the header and block descriptor kept, the page's CDmode byte cleared
    offset = om.mode_page_offset(sense.response, six=six)
    assert sense.response[offset:offset + 4] == bytes([0x3E, 2, 1, 0])
    assert params[offset:] == om.OBDR_CONTENTS and params[2 if six else 3] == 0x10  # tgt's buffered mode


@pytest.mark.parametrize("six", [False, True], ids=["10", "6"])
def test_sense_decodes_as_sg_wr_mode_prints_it(six: bool) -> None:
    t = recorded()["6" if six else "10"]
    sense = decode_sense(t.sense)
    assert sense is not None
    assert (sense.key_name, sense.asc_text) == t.sense_words


def replay(transcripts: dict[str, Transcript], ua_first: bool = False) -> om.Send:
    """A device answering as tgt did: MODE SENSE with the recorded response, MODE SELECT
    with the recorded sense; optionally a power-on UNIT ATTENTION to the first command."""
    answers = {c.cdb: (c.response, t.sense if "select" in c.name else b"")
               for t in transcripts.values() for c in t.commands}  # fmt: skip
    pending = [ua_first]

    def send(cdb: bytes, data_out: bytes | None, data_in: int) -> SgResult:
        if pending[0]:
            pending[0] = False
            ua = decode_sense(bytes.fromhex("700006000000000a00000000290000000000"))
            return SgResult(2, 0, 8, b"", ua, data_in, 0)
        response, sense = answers[cdb]
        if sense:
            return SgResult(2, 0, 8, b"", decode_sense(sense), 0, 0)
        data = response[:data_in]
        return SgResult(0, 0, 0, data, None, data_in - len(data), 0)

    return send


def test_exchange_is_sg_wr_modes_10_then_6_byte_run() -> None:
    transcripts = recorded()
    result = om.leave_cdrom_emulation(replay(transcripts, ua_first=True), device="/dev/sg0", pdt=1)
    sent = [(e.command, e.cdb, e.parameters or b"") for e in result.exchanges]
    expected = [(c.name, c.cdb, c.parameters) for k in ("10", "6") for c in transcripts[k].commands]
    assert sent[0] == expected[0]  # the UNIT ATTENTION: the same MODE SENSE again
    assert sent[1:] == expected
    assert result.outcome == "refused" and result.six
    assert result.detail == ("MODE SELECT(6) of page 3Eh: CHECK CONDITION, Illegal Request: "
                             "Invalid field in parameter list (26h/00h)")
    assert result.page_before == bytes([0x3E, 2, 1, 0])
    report = result.as_dict()
    assert report["exchanges"][0]["sense"]["key_name"] == "Unit Attention"
    assert "response" not in report["exchanges"][0]  # a failed command's buffer is no answer
    assert report["exchanges"][1]["response"] == "00 12 00 10 00 00 00 08 00 00 00 00 00 00 00 00 3e 02 01 00"
    assert report["exchanges"][3]["response"] == "0f 00 10 08 00 00 00 00 00 00 00 00 3e 02 01 00"
    assert report["exchanges"][-1]["parameters"] == "00 00 10 08 00 00 00 00 00 00 00 00 3e 02 00 00"


def _ok(data: bytes = b"") -> SgResult:
    return SgResult(0, 0, 0, data, None, 0, 0)


def test_accepted_switch_and_disk_dpofua() -> None:
    response = bytes([0, 0x0E, 0, 0x10, 0, 0, 0, 0]) + bytes([0x3E, 2, 1, 0]) + bytes(2)
    sent: list[bytes] = []

    def send(cdb: bytes, data_out: bytes | None, data_in: int) -> SgResult:
        sent.append(data_out or b"")
        return _ok(response if data_in else b"")

    result = om.leave_cdrom_emulation(send, device="/dev/sr0", pdt=5)
    assert result.outcome == "switched" and not result.six
    assert sent[1] == bytes([0, 0, 0, 0x10, 0, 0, 0, 0, 0x3E, 2, 0, 0])
    assert om.mode_select_parameters(response, om.OBDR_CONTENTS, six=False, pdt=0)[3] == 0  # DPOFUA off


def test_refusals_and_failures() -> None:
    invalid_cdb = decode_sense(bytes.fromhex("700005000000000a00000000240000000000"))

    def no_page(cdb: bytes, data_out: bytes | None, data_in: int) -> SgResult:
        return SgResult(2, 0, 8, b"", invalid_cdb, data_in, 0)

    refused = om.leave_cdrom_emulation(no_page, device="/dev/sg0", pdt=1)
    assert refused.outcome == "refused" and len(refused.exchanges) == 1
    assert refused.detail == ("MODE SENSE(10) of page 3Eh: CHECK CONDITION, Illegal Request: "
                              "Invalid field in cdb (24h/00h)")

    def broken(cdb: bytes, data_out: bytes | None, data_in: int) -> SgResult:
        raise OSError(5, "Input/output error")

    failed = om.leave_cdrom_emulation(broken, device="/dev/sg0", pdt=1)
    assert failed.outcome == "failed" and failed.exchanges[0].error == "Input/output error"

    def short(cdb: bytes, data_out: bytes | None, data_in: int) -> SgResult:
        return _ok(bytes([3, 0, 0, 0]) if cdb[0] == 0x1A else bytes([0, 6, 0, 0, 0, 0, 0, 0]))

    unusable = om.leave_cdrom_emulation(short, device="/dev/sg0", pdt=1)
    assert unusable.outcome == "failed" and "too short for a page" in unusable.detail


def test_six_byte_list_length_limit() -> None:
    with pytest.raises(ValueError, match="at most 255"):
        om.mode_select_cdb(256, six=True)
    assert om.mode_select_cdb(300) == bytes([0x55, 0x10, 0, 0, 0, 0, 0, 1, 44, 0])
