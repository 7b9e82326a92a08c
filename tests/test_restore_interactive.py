"""`interactive` driven over the serial console with pexpect, the set over HTTP: the curses
screen shows the plan (the saved disk onto the smaller of two disks, by size), `t` sends it
to the other disk, Enter asks for `yes` naming the disk to be overwritten, and the restore
runs with that choice: the report's plan says the disk was chosen at the console, every file
verifies, the disk not chosen is unchanged, and the chosen one boots to the source's marker."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pexpect

from tests.disk_trees import sparse_sha256
from tests.http_test_server import Scenario, directory_files, serving
from tests.image_fixtures import BuiltImage
from tests.restore_fixtures import (
    GIB,
    RESTORE_MARKS,
    RESTORE_TIMEOUT_S,
    SCSI,
    CapturedSet,
    blank_disk,
    boots_to_marker_on,
    last_report,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures", "tests.restore_fixtures")
pytestmark = RESTORE_MARKS
SCREEN_S = 600  # the boot, the network and the set's first plan, under TCG


def test_interactive_changes_the_mapping_confirms_and_restores(
    all_nics_image: BuiltImage, captured: CapturedSet, tmp_path: Path
) -> None:
    chosen = blank_disk(tmp_path / "scsi.img", 8 * GIB)
    other = blank_disk(tmp_path / "virtio.img", 7 * GIB, pattern=b"untouched" * 1000)
    before = sparse_sha256(other)
    devices = ["-drive", f"file={chosen},format=raw,if=none,id=d0", *SCSI,
               "-drive", f"file={other},format=raw,if=none,id=d1", "-device", "virtio-blk-pci,drive=d1",
               "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]  # fmt: skip
    with serving(Scenario(files=directory_files(captured.set_dir, "/set/"))) as base:
        url = base.replace("127.0.0.1", "10.0.2.2") + "/set/"
        append = f"console=ttyS0 interactive url={url} ip=dhcp restore_then=poweroff media_timeout=60"
        argv = qemu_boot.qemu_argv(Path(f"/boot/vmlinuz-{all_nics_image.version}"), all_nics_image.path,
                                   append, devices, memory_mb=1536)  # fmt: skip
        console = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", codec_errors="replace", timeout=SCREEN_S)
        console.logfile_read = (tmp_path / "console.log").open("w")
        try:
            console.expect("interactive restore")
            console.expect("by size")  # the plan's first mapping: vda, the smaller disk
            console.send("t")
            console.expect("vda -> sda")  # the message line: the saved disk now goes to sda
            console.send("\r")
            console.expect("overwritten")
            console.expect("serial|GiB")
            console.send("yes\r")
            console.expect(pexpect.EOF, timeout=RESTORE_TIMEOUT_S)  # restore_then=poweroff
        finally:
            console.close(force=True)
    log = (tmp_path / "console.log").read_text(errors="replace")
    restore = last_report(log.replace("\r", "").splitlines())["restore"]
    assert restore["ok"] and restore["mode"] == "interactive", log[-4000:]
    mapping = [(m["source"], m["target"], m["reason"]) for m in restore["plan"]["mapping"]]
    assert mapping == [("vda", "sda", "chosen at the console")], mapping
    assert restore["verified_files"] == restore["files"] > 1000 and restore["failures"] == []
    assert re.search(r"stage: restore ok \d+ files", log), log[-4000:]
    assert sparse_sha256(other) == before, "the disk not chosen was written"
    boots_to_marker_on(chosen, SCSI, "/dev/sda3")
