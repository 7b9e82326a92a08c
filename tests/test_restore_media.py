"""`nuke` from the rescue medium itself: the captured set carried on the ISO (`iso --data`),
booted by SeaBIOS from a CD drive and, the same file written to a stick, from a USB disk. No
network: the media stage finds the set by the medium's marker, the restore never touches the
medium (the stick is a disk like the target, and the plan must pass it over), and the restored
disk boots to the source's marker on its new controller."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

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
from tests.test_boot_iso import cdrom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures", "tests.restore_fixtures")
pytestmark = RESTORE_MARKS


@pytest.fixture(scope="module")
def data_iso(
    captured: CapturedSet,
    all_nics_image: BuiltImage,
    build_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The rescue ISO with the set on it, its default entry `nuke` (one second's menu)."""
    out = tmp_path_factory.mktemp("data-iso") / "rescue-data.iso"
    argv = ["iso", "-o", str(out), "--initrd", str(all_nics_image.path), "--default-mode", "nuke",
            "--timeout", "1", "--data", str(captured.set_dir), "--media-size", "none",
            "--append", "restore_then=poweroff media_timeout=60"]  # fmt: skip
    assert compose(argv, build_cache) == 0
    return out


def _stick(iso: Path, path: Path, size: int) -> list[str]:
    """The ISO written to the start of a larger, writable USB stick (as `dd` leaves one)."""
    with iso.open("rb") as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.truncate(size)
    return ["-device", "qemu-xhci,id=xhci", "-drive", f"file={path},format=raw,if=none,id=u0",
            "-device", "usb-storage,drive=u0,bus=xhci.0,bootindex=0"]  # fmt: skip


def _restore_from(medium: list[str], target: list[str]) -> dict[str, Any]:
    """Boot the machine from its firmware (the medium first), until the report after the
    restore; the `restore` and `media` sections."""
    result = qemu_boot.boot_firmware(
        [*medium, *target], timeout=RESTORE_TIMEOUT_S, until=UNTIL_REPORT, memory_mb=1536
    )
    lines = list(result.lines)
    assert result.reason == "matched" and any("stage: restore ok" in line for line in lines), "\n".join(
        lines[-80:]
    )
    report = last_report(lines)
    return {"restore": report["restore"], "media": report["media"]}


def test_nuke_from_the_iso_booted_as_a_cdrom_onto_an_ahci_disk(data_iso: Path, tmp_path: Path) -> None:
    disk = blank_disk(tmp_path / "sata.img", 8 * GIB)
    sections = _restore_from(
        cdrom(data_iso), ["-drive", f"file={disk},format=raw,if=none,id=d0", *AHCI_PORT1]
    )
    media = sections["media"]
    assert media["kind"] == "cdrom" and media["source"].startswith("/dev/sr"), media
    restore = sections["restore"]
    assert [(m["source"], m["target"]) for m in restore["plan"]["mapping"]] == [("vda", "sda")]
    assert restore["failures"] == [] and restore["verified_files"] == restore["files"] > 1000
    boots_to_marker_on(disk, AHCI_PORT1, "/dev/sda3")


def test_nuke_from_the_iso_written_to_a_usb_stick_passes_the_stick_over(
    data_iso: Path, tmp_path: Path
) -> None:
    """The stick is /dev/sda, writable and larger than the target: the plan must never choose
    it, and its bytes stay as they were; the target is the virtio disk."""
    disk = blank_disk(tmp_path / "virtio.img", 7 * GIB)
    stick = tmp_path / "stick.img"
    medium = _stick(data_iso, stick, 8 * GIB)
    before = sparse_sha256(stick)
    sections = _restore_from(medium, ["-drive", f"file={disk},format=raw,if=virtio"])
    assert sparse_sha256(stick) == before
    media = sections["media"]
    assert media["kind"] == "usb" and media["source"] == "/dev/sda", media
    restore = sections["restore"]
    assert [(m["source"], m["target"]) for m in restore["plan"]["mapping"]] == [("vda", "vda")]
    passed_over = {u["target"]: u["why"] for u in restore["plan"]["unused"]}
    assert "restore set" in passed_over.get("sda", ""), passed_over
    assert restore["failures"] == [] and restore["verified_files"] == restore["files"] > 1000
    boots_to_marker_on(disk, ("-device", "virtio-blk-pci,drive=d0"), "/dev/vda3")
