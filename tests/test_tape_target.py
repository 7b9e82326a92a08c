"""scripts/tape_target.py on the host: tgtimg makes a cartridge, tgtd serves it on a private
port and control port, tgtadm shows the LUN, and stopping leaves nothing listening."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import tape_target


def test_serves_a_tape_lun_and_stops(tmp_path: Path) -> None:
    image = tape_target.new_tape(tmp_path / "t.img", barcode="UNIT0001", size_mb=8)
    assert tape_target.show(image) == []  # a new cartridge: no records, no filemarks
    lun = tape_target.TapeLun(image, vendor_id="HP", product_id="Ultrium 3-SCSI",
                              mode_pages=("0x3e:0:2:1:0",))
    with tape_target.TapeTarget([lun], name="unit", log_path=tmp_path / "tgtd.log") as target:
        shown = target.show_luns()
        assert f"Target 1: {target.iqn}" in shown and "LUN: 1" in shown and "Type: tape" in shown
        assert f"Backing store path: {image}" in shown
        with socket.create_connection(("127.0.0.1", target.port), timeout=5):
            pass  # the iSCSI portal listens
        args = target.qemu_args()
        assert args[:2] == ["-device", "virtio-scsi-pci,id=tapehba"]
        assert f"file=iscsi://127.0.0.1:{target.port}/{target.iqn}/1,if=none,id=tape1,format=raw" in args
        assert "scsi-generic,drive=tape1,bus=tapehba.0,channel=0,scsi-id=1,lun=0" in args
        port = target.port
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_missing_image_and_bad_mode_page(tmp_path: Path) -> None:
    with pytest.raises(tape_target.TapeTargetError, match="no such tape image"):
        tape_target.TapeTarget([tape_target.TapeLun(tmp_path / "none.img")]).start()
    image = tape_target.new_tape(tmp_path / "t.img", size_mb=8)
    bad = tape_target.TapeLun(image, mode_pages=("0x3e:0:1:1:2:3",))  # more bytes than its length
    with pytest.raises(tape_target.TapeTargetError, match="tgtadm"):
        tape_target.TapeTarget([bad], log_path=tmp_path / "tgtd.log").start()


def test_files_of_groups_records_by_filemark() -> None:
    rec = tape_target.TapeRecord
    records = [rec("data", 512), rec("data", 512), rec("filemark", 0), rec("filemark", 0), rec("data", 9)]
    assert tape_target.files_of(records) == [[512, 512], [], [9]]
