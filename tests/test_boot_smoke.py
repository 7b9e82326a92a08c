"""The composed image really boots: Debian's kernel, our /init, QEMU (TCG)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from initrd_composer.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("qemu")]


@pytest.fixture(scope="module")
def booted(kernel: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    version = kernel[0]
    vmlinuz = Path(f"/boot/vmlinuz-{version}")
    if not vmlinuz.exists():
        pytest.fail(f"{vmlinuz} missing: scripts/setup installs linux-image-amd64")
    tmp = tmp_path_factory.mktemp("smoke")
    image = tmp / "initrd.img"
    assert main(["--kernel", version, "--all-nics", "-o", str(image)]) == 0
    disk = tmp / "disk.img"
    with disk.open("wb") as f:
        f.truncate(64 * 2**20)
    result = qemu_boot.boot(
        vmlinuz, image, "console=ttyS0 probe",
        ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0",
         "-device", "ahci,id=a0", "-drive", f"if=none,id=d0,file={disk},format=raw",
         "-device", "ide-hd,drive=d0,bus=a0.0"],
        timeout=90,
    )
    assert result.reason == "matched", "\n".join(result.lines[-30:])
    assert result.matched_line is not None
    report = json.loads(result.matched_line.split(":", 1)[1])
    assert isinstance(report, dict)
    return report


def test_init_probes_nic_and_disk(booted: dict[str, object]) -> None:
    netdevs = booted["netdevs"]
    blockdevs = booted["blockdevs"]
    assert isinstance(netdevs, list) and isinstance(blockdevs, list)
    assert {"e1000"} <= {n["driver"] for n in netdevs}
    disks = [b for b in blockdevs if b["type"] == "disk"]
    assert any(b["driver"] == "sd" and b["size_bytes"] == 64 * 2**20 for b in disks), blockdevs
    loaded = booted["loaded"]
    assert isinstance(loaded, list) and {"e1000", "ahci", "sd_mod"} <= set(loaded)
    timings = booted["timings"]
    assert isinstance(timings, dict) and 0 < timings["init_start"] < timings["probe_end"]
