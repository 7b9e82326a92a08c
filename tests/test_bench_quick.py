"""`scripts/bench --quick` in the suite, so the benchmark's NFS and PXE stages cannot rot:
one NFS boot of our image and one of initramfs-tools' (Debian's own initrd, boot=nfs) against
nfs-ganesha, and one iPXE boot over each of TFTP and HTTP, on the session's --all-nics image.
The numbers are not compared with anything here (the machine is shared); the run must get
every mark, and write OUT/quick.md and OUT/quick.json, never BENCHMARKS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.image_fixtures import BuiltImage

pytest_plugins = ("tests.image_fixtures",)
# port 2049 is the NFS tests' (one server at a time)
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("nfs")]

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_measures_nfs_and_pxe(all_nics_image: BuiltImage, tmp_path: Path) -> None:
    benchmarks = ROOT / "BENCHMARKS.md"
    before = benchmarks.stat().st_mtime_ns
    argv = [sys.executable, str(ROOT / "scripts/bench"), "--quick", "--kernel", all_nics_image.version,
            "--image", str(all_nics_image.path), "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=540, check=False)  # noqa: S603
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert benchmarks.stat().st_mtime_ns == before
    doc = json.loads((tmp_path / "quick.json").read_text())
    nfs, pxe = doc["nfs"], doc["pxe"]
    (ours,), (debian,) = nfs["ours"], nfs["debian"]
    assert ours["kernel_init"] < ours["probe_end"] < ours["mounted"] and ours["version"].startswith("4")
    assert debian["init_start"] < debian["premount"] < debian["mounted"] and debian["version"] == "3"
    assert nfs["debian_image"] == f"/boot/initrd.img-{all_nics_image.version}"
    runs = pxe["runs"]
    assert [r["protocol"] for r in runs] == ["tftp", "http"]
    for run in runs:
        assert 0 < run["script_done"] < run["kernel_start"] < run["initrd_start"] < run["first_console"]
        assert run["initrd_seconds"] > 0 and pxe["initrd_bytes"] <= run["ramdisk_bytes"]
    assert runs[1]["request_seconds"] > 0
    text = (tmp_path / "quick.md").read_text()
    assert "## NFS media over DHCP" in text and "## PXE transfer: TFTP vs HTTP" in text
    assert "Quick run (--quick)" in text
    assert sorted(p.name for p in (tmp_path / "console").iterdir()) == [
        "nfs-debian-1.txt", "nfs-ours-1.txt", "pxe-http-1.txt", "pxe-tftp-1.txt"]  # fmt: skip
    print(f"bench --quick: {proc.stderr.strip().splitlines()[-4:]}")
