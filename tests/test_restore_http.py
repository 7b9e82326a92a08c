"""`nuke` with the restore set on an HTTP server (`url=` its directory), the server on the
host's loopback (10.0.2.2 to the guest): every archive streamed into the extraction, never
staged; the server drops the connection in the middle of the root archive (RST) and of the
/srv one (FIN), the stream resumes with Range at the byte it had reached, every file still
verifies, and the restored disk boots to the source's marker. With MondoRescue's `noresize`:
the 8 GiB disk gets the saved 6 GiB disk's partitions at their saved sizes, the rest free."""

from __future__ import annotations

from pathlib import Path

from tests.http_test_server import Drop, Scenario, directory_files
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
MIB = 1 << 20
# An AHCI controller of its own: not the machine's built-in one, whatever the machine type.
# (QEMU 7.2's megasas-gen2 under TCG made megaraid_sas hit a kernel BUG during grub-install.)
AHCI = ("-device", "ahci,id=ahci0", "-device", "ide-hd,drive=d0,bus=ahci0.0")


def test_nuke_over_http_resumes_dropped_archives_and_verifies(
    all_nics_image: BuiltImage, captured: CapturedSet, tmp_path: Path
) -> None:
    sizes = {p.name: p.stat().st_size for p in captured.set_dir.iterdir()}
    drops = {f"/set/{name}": [Drop(sizes[name] // 2, how)] for name, how in
             (("root.pax.zst", "reset"), ("srv.pax.zst", "close"))}  # fmt: skip
    scenario = Scenario(files=directory_files(captured.set_dir, "/set/"), path_drops=drops)
    disk = blank_disk(tmp_path / "ahci.img", 8 * GIB)
    devices = ["-drive", f"file={disk},format=raw,if=none,id=d0", *AHCI,
               "-netdev", "user,id=n0", "-device", "e1000,netdev=n0"]  # fmt: skip
    url, lines = restore_over_http(all_nics_image, scenario, devices, "nuke noresize")
    report = last_report(lines)
    assert report["media"]["kind"] == "http" and report["media"]["source"] == url + "manifest.json"
    restore = report["restore"]
    assert restore["set"] == url and restore["failures"] == []
    assert restore["verified_files"] == restore["files"] > 1000
    assert restore["resize"] is False
    assert any("restore plan: noresize: every partition keeps its saved size" in line for line in lines)
    for part in restore["plan"]["plan"]["disks"][0]["partitions"]:
        grown = part["new_bytes"] - part["old_bytes"]
        assert part["how"] in ("fixed", "same", "aligned") and 0 <= grown < MIB, part
    for path in drops:  # each dropped archive asked again from the byte it had reached
        ranges = [r.range for r in scenario.requests if r.path == path and r.method == "GET"]
        assert len(ranges) == 2 and ranges[0] is None, (path, ranges)
        assert ranges[1] is not None and 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) < sizes[
            path.removeprefix("/set/")
        ], (path, ranges)
    assert sum("resumed at byte" in line for line in lines) >= 2, [line for line in lines if "http:" in line]
    boots_to_marker_on(disk, AHCI, "/dev/sda3")
