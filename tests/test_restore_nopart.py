"""`nuke nopart` (MondoRescue's word): the restore goes into the partitions the disk has
already, made beforehand with the saved disk's numbers and types at other sizes, plus a
fifth partition the saved disk never had. No partition table is written (GPT's headers and
entries, both copies, keep their bytes), the fifth partition keeps its data, every file
verifies, and the disk boots to the source's marker. The set comes over HTTP."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from initrd_composer.runner import run
from tests.http_test_server import Scenario, directory_files
from tests.image_fixtures import BuiltImage
from tests.restore_fixtures import (
    GIB,
    RESTORE_MARKS,
    CapturedSet,
    blank_disk,
    boots_to_marker_on,
    last_report,
    restore_over_http,
)

pytest_plugins = ("tests.image_fixtures", "tests.restore_fixtures")
pytestmark = RESTORE_MARKS
DISK_BYTES = 8 * GIB
TABLE = """label: gpt
start=2048, size=4096, type=21686148-6449-6E6F-744E-656564454649
size=512MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
size=512MiB, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F
size=5GiB, type=E6D6D379-F507-44C2-A23C-238F2A3DF928
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
"""
GPT_BYTES = 33 * 512  # a header and 128 entries of 128 bytes


def _hashes(disk: Path, ranges: list[tuple[int, int]]) -> list[str]:
    with disk.open("rb") as f:
        out = []
        for start, size in ranges:
            f.seek(start)
            out.append(hashlib.sha256(f.read(size)).hexdigest())
        return out


def test_nopart_restores_into_the_disks_own_partitions(
    all_nics_image: BuiltImage, captured: CapturedSet, tmp_path: Path
) -> None:
    disk = blank_disk(tmp_path / "parted.img", DISK_BYTES)
    run(["sfdisk", "--quiet", str(disk)], input_bytes=TABLE.encode())
    table = json.loads(run(["sfdisk", "--json", str(disk)]).stdout)["partitiontable"]
    by_number = {int(p["node"].rsplit("img", 1)[1]): p for p in table["partitions"]}
    fifth = by_number[5]
    with disk.open("r+b") as f:
        f.seek(fifth["start"] * 512)
        f.write(b"kept by nopart" * 4096)
    kept = [(512, GPT_BYTES), (DISK_BYTES - GPT_BYTES, GPT_BYTES),  # both GPT copies, and partition 5
            (fifth["start"] * 512, fifth["size"] * 512)]
    before = _hashes(disk, kept)
    scenario = Scenario(files=directory_files(captured.set_dir, "/set/"))
    _url, lines = restore_over_http(all_nics_image, scenario, ["-drive", f"file={disk},format=raw,if=virtio"],
                                    "nuke nopart")
    restore = last_report(lines)["restore"]
    assert restore["nopart"] and restore["plan"]["in_place"], restore
    assert any("nopart: no partition table is written" in line for line in lines)
    parts = {p["number"]: p for p in restore["plan"]["plan"]["disks"][0]["partitions"]}
    assert {n: (p["start_sector"], p["size_sectors"], p["how"]) for n, p in parts.items()} == {
        n: (by_number[n]["start"], by_number[n]["size"], "in place") for n in range(1, 5)
    }
    assert restore["written"]["disks"] == []
    assert restore["written"]["wiped"] == [f"/dev/vda{n}" for n in range(1, 5)]
    assert restore["failures"] == [] and restore["verified_files"] == restore["files"] > 1000
    assert _hashes(disk, kept) == before
    boots_to_marker_on(disk, ("-device", "virtio-blk-pci,drive=d0"), "/dev/vda3")
