"""`nuke` from an OBDR tape on a real st driver: `compose-initrd obdr --data SET` lays the
captured set out as a tape (header, ISO, data), a writer boot copies it onto tgt's emulated
SSC tape, and the machine boots the tape's ISO from a CD drive (standing in for the drive's
CD-ROM emulation; the ISO's entries carry `obdr`). The media stage finds the tape, checks its
data file against the label and lists the set in it; nuke reads the manifest and layout, then
extracts the archives front to back from the drive, verifies every file, and the disk, on a
controller the source never had, boots to the source's marker."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.tape import TapeImageDir
from tests.disk_trees import sparse_sha256
from tests.image_fixtures import BuiltImage, compose
from tests.restore_fixtures import (
    AHCI_PORT1,
    GIB,
    RESTORE_MARKS,
    RESTORE_TIMEOUT_S,
    UNTIL_REPORT,
    CapturedSet,
    blank_disk,
    boots_to_marker_on,
    last_report,
)
from tests.tape_fixtures import copy_writer_disk, write_tape
from tests.test_boot_iso import cdrom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot
import tape_target

pytest_plugins = ("tests.image_fixtures", "tests.restore_fixtures")
pytestmark = RESTORE_MARKS
MIB = 1 << 20


@pytest.fixture(scope="module")
def set_tape(
    captured: CapturedSet,
    all_nics_image: BuiltImage,
    build_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path]:
    """The captured set on a tgt tape, as `obdr --data` lays it: (the tape's ISO, the tape)."""
    base = tmp_path_factory.mktemp("set-tape")
    layout = base / "layout"
    argv = ["obdr", "--initrd", str(all_nics_image.path), "--default-mode", "nuke", "--timeout", "1",
            "--data", str(captured.set_dir), "--append", "restore_then=poweroff media_timeout=60",
            "-o", str(layout)]  # fmt: skip
    assert compose(argv, build_cache) == 0
    files = TapeImageDir.open(layout).files
    size_mb = sum(f["bytes"] for f in files) // MIB + 64
    tape = tape_target.new_tape(base / "set.img", barcode="SET00001", size_mb=size_mb)
    disk, typed = copy_writer_disk(base, layout)
    write_tape(all_nics_image, disk, typed, tape, base / "tgtd-writer.log")
    disk.unlink()
    assert tape_target.files_of(tape_target.show(tape))[2], "the data file is on the tape"
    return layout / "file-001.bin", tape


@dataclass(frozen=True)
class TapeRestore:
    disk: Path
    lines: list[str]
    report: dict[str, Any]


@pytest.fixture(scope="module")
def tape_restored(set_tape: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> TapeRestore:
    """nuke from the tape, the tape's ISO booted from a CD drive, onto an AHCI disk."""
    iso, written = set_tape
    base = tmp_path_factory.mktemp("tape-restore")
    tape = base / "tape.img"
    shutil.copyfile(written, tape)  # tgt opens its tape read-write
    disk = blank_disk(base / "sata.img", 8 * GIB)
    with tape_target.TapeTarget([tape_target.TapeLun(tape)], name="restore",
                                log_path=base / "tgtd.log") as target:  # fmt: skip
        result = qemu_boot.boot_firmware(
            [*cdrom(iso), "-drive", f"file={disk},format=raw,if=none,id=d0", *AHCI_PORT1,
             *target.qemu_args()],
            timeout=RESTORE_TIMEOUT_S,
            until=UNTIL_REPORT,
            memory_mb=1536,
        )
    lines = list(result.lines)
    tail = "\n".join(lines[-80:])
    assert result.reason == "matched" and any("stage: restore ok" in line for line in lines), tail
    return TapeRestore(disk, lines, last_report(lines))


def test_nuke_from_an_obdr_tape_onto_a_sata_disk(tape_restored: TapeRestore) -> None:
    report, disk = tape_restored.report, tape_restored.disk
    media = report["media"]
    assert media["kind"] == "tape" and media["source"].startswith("/dev/nst"), media
    data = media["data"]
    assert data["obdr"]["candidates"] == [], data["obdr"]  # no HP drive: nothing switched
    listed = [name for name, _size in data["set_index"]["files"]]
    assert listed[:2] == ["manifest.json", "layout.json"] and data["set_index"]["complete"], listed
    restore = report["restore"]
    assert restore["set"].startswith(media["source"] + " file 2"), restore["set"]
    assert [(m["source"], m["target"]) for m in restore["plan"]["mapping"]] == [("vda", "sda")]
    assert restore["failures"] == [] and restore["verified_files"] == restore["files"] > 1000
    boots_to_marker_on(disk, AHCI_PORT1, "/dev/sda3")


def test_compare_from_the_tape_reads_only_its_manifest_and_writes_nothing(
    all_nics_image: BuiltImage, set_tape: tuple[Path, Path], tape_restored: TapeRestore, tmp_path: Path
) -> None:
    """`compare` with the set on the tape (`tapedev=`): the restored disk matches the set but
    for what the restore's own fix-ups changed, and its bytes stay as they were."""
    _iso, written = set_tape
    tape = tmp_path / "tape.img"
    shutil.copyfile(written, tape)
    disk = tmp_path / "restored.img"
    shutil.copyfile(tape_restored.disk, disk)
    before = sparse_sha256(disk)
    append = "console=ttyS0 compare tapedev=/dev/nst0 restore_then=poweroff media_timeout=60"
    with tape_target.TapeTarget([tape_target.TapeLun(tape)], name="compare",
                                log_path=tmp_path / "tgtd.log") as target:  # fmt: skip
        devices = ["-drive", f"file={disk},format=raw,if=none,id=d0", *AHCI_PORT1, *target.qemu_args()]
        result = qemu_boot.boot(Path(f"/boot/vmlinuz-{all_nics_image.version}"), all_nics_image.path,
                                append, devices, timeout=RESTORE_TIMEOUT_S, until='"compare":{',
                                memory_mb=1536)  # fmt: skip
    lines = list(result.lines)
    assert result.reason == "matched", "\n".join(lines[-80:])
    compare = last_report(lines)["compare"]
    assert sparse_sha256(disk) == before, "compare wrote to the disk"
    assert compare["ok"] and compare["set"].startswith("/dev/nst0 file 2"), compare
    fixups = set(tape_restored.report["restore"]["fixups"]["changed"])
    differing = {c["path"] for c in compare["changed"]} | set(compare["missing"]) | set(compare["extra"])
    assert differing - fixups - {"/", "/boot"} == set(), (differing - fixups, compare["changed"])
    assert compare["files_compared"] == tape_restored.report["restore"]["files"]
