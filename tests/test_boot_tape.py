"""The tape source on a real st driver: tgt's emulated SSC drive over iSCSI, passed to the guest
as a SCSI device (scripts/tape_target.py), with tapes written by a guest once per session
(tests/tape_fixtures.py). `probe` boots report the `media` section: the data file's sha256
must be the host's, a tape without our label is the wrong tape, and with `obdr` the MODE SELECT
that takes an HP drive out of CD-ROM emulation is sent byte for byte as sg_wr_mode sends it
(tgt's drive refuses it, and the tape is read all the same)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.obdr_mode import mode_data_length
from initrd_composer.boot.tape import OBDR_HEADER_BLOCK, OBDR_HEADER_BLOCKS, TapeImageDir
from tests.image_fixtures import BuiltImage
from tests.tape_fixtures import WrittenTapes, hp_drive, vmlinuz
from tests.test_obdr_mode import Transcript, parse_transcript, recorded

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot
import tape_target

pytest_plugins = ("tests.image_fixtures", "tests.tape_fixtures")
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("tape")]


def _serve(tmp: Path, *images: Path) -> list[Path]:
    """Private writable copies: tgtd opens its backing files read-write."""
    out = []
    for image in images:
        copy = tmp / image.name
        shutil.copyfile(image, copy)
        out.append(copy)
    return out


def _boot(image: BuiltImage, append: str, luns: list[tape_target.TapeLun],
          tmp: Path) -> tuple[dict[str, Any], list[str]]:
    with tape_target.TapeTarget(luns, name="probe", log_path=tmp / "tgtd.log") as target:
        result = qemu_boot.boot(vmlinuz(image), image.path, f"console=ttyS0 probe media_timeout=20 {append}",
                                target.qemu_args(), timeout=240)  # fmt: skip
    assert result.reason == "matched", "\n".join(result.lines[-60:])
    assert result.matched_line is not None
    report: dict[str, Any] = json.loads(result.matched_line.split(":", 1)[1])
    return report, list(result.lines)


def _st_bound(report: dict[str, Any], count: int = 1) -> None:
    tapes = [b for b in report["blockdevs"] if b["type"] == "tape"]
    assert [(b["name"], b["driver"]) for b in tapes] == [(f"st{i}", "st") for i in range(count)], tapes
    assert all(b["drivers"][:2] == ["st", "virtio_scsi"] for b in tapes), tapes
    scsi = [d for d in report["devices"] if d["modalias"] == "scsi:t-0x01"]
    assert [d["driver"] for d in scsi] == ["st"] * count, scsi


def _stage_line(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("stage: media "))


def test_the_image_packs_st_and_sg(all_nics_image: BuiltImage) -> None:
    """st drives the tape, sg carries the OBDR switch (nothing loads it but the tape source)."""
    assert {"st", "sg"} <= set(all_nics_image.manifest.modules)


def test_tape_holds_the_obdr_layout(written_tapes: WrittenTapes) -> None:
    """What the guest's dd/mt-st wrote, read back by tgtimg: exactly the OBDR layout, no
    empty file from an extra filemark."""
    layout = TapeImageDir.open(written_tapes.layout).files
    iso_records = layout[1]["bytes"] // 2048
    data_records = layout[2]["bytes"] // 65536
    assert written_tapes.records["obdr"] == [
        [OBDR_HEADER_BLOCK] * OBDR_HEADER_BLOCKS, [2048] * iso_records, [65536] * data_records
    ]
    assert written_tapes.records["foreign"] == [[OBDR_HEADER_BLOCK] * OBDR_HEADER_BLOCKS, [10240]]


def _commands(t: Transcript) -> list[tuple[str, str, str]]:
    return [(c.name, c.cdb.hex(" "), c.parameters.hex(" ")) for c in t.commands]


def test_sg_wr_mode_transcript_is_current(written_tapes: WrittenTapes) -> None:
    """sg_wr_mode, run again in this session's writer boot, sends and gets what the recorded
    transcript the unit tests check against says (tests/data/sg_wr_mode_tgt.txt)."""
    saved = recorded()
    assert written_tapes.exit_status == {"10": 9, "6": 5}  # invalid opcode; illegal request
    for key, text in written_tapes.transcripts.items():
        live = parse_transcript(text)
        assert _commands(live) == _commands(saved[key])
        assert [c.response for c in live.commands] == [c.response for c in saved[key].commands]
        assert (live.sense, live.sense_words) == (saved[key].sense, saved[key].sense_words)


def _media_ok(report: dict[str, Any], written_tapes: WrittenTapes) -> dict[str, Any]:
    media = report["media"]
    assert media["ok"], media
    assert (media["kind"], media["source"], media["path"]) == ("tape", "/dev/nst0", "/dev/nst0 file 2")
    data: dict[str, Any] = media["data"]
    layout = TapeImageDir.open(written_tapes.layout).files
    assert data["sha256"] == written_tapes.data_sha256
    assert (data["bytes"], data["block_size"], data["records"]) == (layout[2]["bytes"], 65536,
                                                                    layout[2]["bytes"] // 65536)
    assert data["label"]["iso_bytes"] == layout[1]["bytes"] and data["label"]["data_block_size"] == 65536
    assert data["files_seen"][0] == {"file": 0, "role": "header", "records": 20, "bytes": 10240,
                                     "block_size": 512, "as_written": True}
    assert data["files_seen"][2]["record_sizes"] == [65536]
    return data


def test_tapedev_reads_the_data_file(all_nics_image: BuiltImage, written_tapes: WrittenTapes,
                                     tmp_path: Path) -> None:
    (tape,) = _serve(tmp_path, written_tapes.obdr)
    report, lines = _boot(all_nics_image, "tapedev=/dev/nst0", [tape_target.TapeLun(tape)], tmp_path)
    _st_bound(report)
    data = _media_ok(report, written_tapes)
    assert "obdr" not in data
    assert data["tapes_checked"] == [{"device": "/dev/nst0", "ours": True, "why": None}]
    assert _stage_line(lines) == "stage: media ok tape /dev/nst0 at /dev/nst0 file 2"


def test_obdr_mode_select_refused_and_the_tape_read(all_nics_image: BuiltImage, written_tapes: WrittenTapes,
                                                     tmp_path: Path) -> None:
    (tape,) = _serve(tmp_path, written_tapes.obdr)
    report, lines = _boot(all_nics_image, "obdr", [hp_drive(tape)], tmp_path)
    _st_bound(report)
    data = _media_ok(report, written_tapes)
    obdr = data["obdr"]
    assert obdr["candidates"] == ["2:0:1:0 HP Ultrium 3-SCSI"] and obdr["skipped"] == []
    (drive,) = obdr["devices"]
    assert (drive["outcome"], drive["device"], drive["page_before"]) == ("refused", "/dev/sg0", "3e 02 01 00")
    detail = ("MODE SELECT(6) of page 3Eh: CHECK CONDITION, Illegal Request: "
              "Invalid field in parameter list (26h/00h)")
    assert drive["detail"] == detail and "rescan" not in drive
    # what went over SG_IO is what sg_wr_mode sends: its 10-byte run, then its 6-byte run
    # (the drive knows no MODE SELECT(10)); a first MODE SENSE may meet the power-on UNIT
    # ATTENTION and is sent again
    sent = [(e["command"], e["cdb"], e.get("parameters", "")) for e in drive["exchanges"]]
    expected = [c for key in ("10", "6") for c in _commands(parse_transcript(written_tapes.transcripts[key]))]
    assert sent[-len(expected):] == expected
    retried = drive["exchanges"][: len(sent) - len(expected)]
    assert all(e["sense"]["key_name"] == "Unit Attention" for e in retried) and len(retried) <= 1
    assert drive["exchanges"][-1]["sense"]["raw"] == recorded()["6"].sense.hex(" ")
    # and the drive answered both MODE SENSEs as it answered sg_wr_mode
    answers = [c.response[: mode_data_length(c.response, c.cdb)].hex(" ") for key in ("10", "6")
               for c in parse_transcript(written_tapes.transcripts[key]).commands if c.response]  # fmt: skip
    assert [e["response"] for e in drive["exchanges"] if "response" in e] == answers
    assert any(line.endswith(f"(/dev/sg0): {detail}") for line in lines)
    assert _stage_line(lines) == "stage: media ok tape /dev/nst0 at /dev/nst0 file 2"


def test_a_tape_without_our_label_is_the_wrong_tape(all_nics_image: BuiltImage, written_tapes: WrittenTapes,
                                                     tmp_path: Path) -> None:
    """ReaR's OBDR tape in a drive that is no HP one: `obdr` sends it nothing and looks at
    any drive. (A blank tgt tape is no blank tape: tgt answers its first READ with a full
    buffer of zeros, so blank tapes are left to the unit tests.)"""
    (foreign,) = _serve(tmp_path, written_tapes.foreign)
    report, lines = _boot(all_nics_image, "obdr", [tape_target.TapeLun(foreign)], tmp_path)
    _st_bound(report)
    media = report["media"]
    assert (media["ok"], media["reason"], media["kind"], media["source"]) == (
        False, "wrong-tape", "tape", "any")
    assert media["error"] == (
        "no restore tape in /dev/nst0 (/dev/nst0: file 0 holds ReaR's OBDR label, not ours)")
    assert media["hint"].startswith("load the OBDR tape")
    assert any("obdr: no HP tape drive or CD-ROM" in line for line in lines)
    assert _stage_line(lines) == f"stage: media failed tape any: {media['error']}"


def test_rescan_brings_the_drive_back(written_tapes: WrittenTapes) -> None:
    """The boot side's rescan (what follows an accepted OBDR switch), run in the writer boot on
    tape B's drive: the kernel removed the device, found it again, and st drives it anew."""
    assert written_tapes.rescan == {"before": "nst1", "after": ["nst1"],
                                    "result": {"rescans": 1, "type": 1, "tape": "nst1", "error": None}}
    assert written_tapes.rescan_attached == 2
