"""The rescue ISO found by its marker in real boots (`probe iso_mode`, -kernel/-initrd): as a
CD on the PIIX IDE bus, on an AHCI controller and on an LSI SCSI HBA, and copied onto a USB
stick. Each boot also carries a decoy with the same label RESCUE and no marker, placed where
it is looked at first; the last boot has only decoys (a CD, a FAT stick, an empty drive) and
must fail with no-marker within media_timeout= and still report.

Which device is ours is read from the report (the blockdev of the ISO's size), never assumed.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.sources.marker import MARKER_PATH
from initrd_composer.cli import main as cli
from initrd_composer.runner import run
from tests.image_fixtures import EPOCH, BuiltImage, build_env

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures",)
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("removable")]

DATA_FILE = "restore-marker.txt"
NO_MARKER = f"no /{MARKER_PATH}"
# Loaded by the probe from the devices' modaliases (the report's `loaded`).
DRIVERS = ("sr_mod", "cdrom", "ata_piix", "ahci", "sym53c8xx", "usb_storage", "uas", "xhci_pci")
# Loaded by the kernel's request_module (fs-iso9660, fs-vfat, nls_cp437) through the image's
# modprobe when the finder mounts: not in `loaded`; a mount that works is their proof.
FS_MODULES = ("isofs", "udf", "vfat", "fat", "nls_cp437", "nls_ascii", "nls_utf8", "ext4")


@dataclass(frozen=True)
class Media:
    image: BuiltImage
    rescue: Path  # `compose-initrd iso --data DIR`: the disc /init must find
    decoy_iso: Path  # xorriso, labelled RESCUE, no marker
    decoy_fat: Path  # mkfs.fat, labelled RESCUE, no marker


@pytest.fixture(scope="session")
def media(all_nics_image: BuiltImage, build_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Media:
    base = tmp_path_factory.mktemp("removable")
    (base / "data").mkdir()
    (base / "data" / DATA_FILE).write_text("the restore data is here\n")
    rescue = base / "rescue.iso"
    with build_env(build_cache, EPOCH):
        argv = ["iso", "--initrd", str(all_nics_image.path), "--data", str(base / "data"), "-o", str(rescue)]
        assert cli.main(argv) == 0
    tree = base / "decoy"
    tree.mkdir()
    (tree / "decoy.txt").write_text("not the rescue disc\n")
    env = {"SOURCE_DATE_EPOCH": str(EPOCH), "MTOOLS_SKIP_CHECK": "1"}
    iso = base / "decoy.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "RESCUE", "-r", "-J", "-o", iso, tree], env=env)
    fat = base / "decoy.fat"
    run(["mkfs.fat", "-C", "--invariant", "-n", "RESCUE", fat, "8192"], env=env)
    run(["mcopy", "-i", fat, tree / "decoy.txt", "::/"], env=env)
    return Media(all_nics_image, rescue, iso, fat)


def cd(path: Path | None, ident: str, device: str) -> list[str]:
    """A CD drive (`device` names the model and bus); None: the drive is empty."""
    medium = f"file={path},readonly=on," if path else ""
    return ["-drive", f"{medium}media=cdrom,if=none,id={ident}", "-device", f"{device},drive={ident}"]


def usb_stick(path: Path, ident: str) -> list[str]:
    return ["-drive", f"file={path},format=raw,if=none,id={ident},readonly=on",
            "-device", f"usb-storage,drive={ident},bus=xhci.0"]  # fmt: skip


XHCI = ["-device", "qemu-xhci,id=xhci"]
IDE0, IDE1 = "ide-cd,bus=ide.0,unit=0", "ide-cd,bus=ide.1,unit=0"


def _boot(image: BuiltImage, devices: list[str], timeout_s: int) -> tuple[dict[str, Any], list[str]]:
    vmlinuz = Path(f"/boot/vmlinuz-{image.version}")
    append = f"console=ttyS0 probe iso_mode media_timeout={timeout_s}"
    result = qemu_boot.boot(vmlinuz, image.path, append, devices, timeout=150)
    assert result.reason == "matched", "\n".join(result.lines[-40:])
    assert result.matched_line is not None
    report = json.loads(result.matched_line.split(":", 1)[1])
    assert isinstance(report, dict)
    return report, list(result.lines)


def _found(media: Media, devices: list[str], kind: str, controller: str) -> dict[str, Any]:
    """Boot; the rescue disc must be found behind `controller`, after the decoy ISO. Devices
    are told apart by size (the finder reports what sysfs said of each)."""
    report, lines = _boot(media.image, devices, 20)
    section = report["media"]
    assert section["ok"] and section["kind"] == kind, section
    data = section["data"]
    sizes = {c["device"]: c["size_bytes"] for c in data["candidates"]}
    assert sizes[section["source"]] == media.rescue.stat().st_size, data["candidates"]
    assert DATA_FILE in data["listing"] and section["path"].endswith("/data"), section
    assert (data["volume_id"], data["fstype"]) == ("RESCUE", "iso9660")
    assert data["marker"]["initrd_sha256"] == hashlib.sha256(media.image.path.read_bytes()).hexdigest()
    # the decoy, same label, was looked at first and refused for having no marker
    first, *_, last = data["candidates"]
    assert (first["size_bytes"], first["label"], first["refused"]) == (
        media.decoy_iso.stat().st_size, "RESCUE", NO_MARKER
    ), first
    assert (last["device"], last["refused"]) == (section["source"], None)
    assert f"stage: media ok {kind} {section['source']} at {section['path']}" in lines
    probed = {f"/dev/{b['name']}": b for b in report["blockdevs"]}
    if section["source"] in probed:  # the probe saw it: its driver chain names the controller
        assert controller in probed[section["source"]]["drivers"], probed[section["source"]]
    else:  # scanned after the probe had stopped listening: the finder loaded its driver
        assert "" in data["late_drivers"].values(), data["late_drivers"]
    assert {"sr_mod", "cdrom"} <= set(report["loaded"]), report["loaded"]
    assert not set(report["failed"]) & {*DRIVERS, *FS_MODULES}, report["failed"]
    return report


def test_modules_for_the_media_are_in_the_image(all_nics_image: BuiltImage) -> None:
    assert not {*DRIVERS, *FS_MODULES} - set(all_nics_image.manifest.modules)


def test_cd_on_piix_ide_after_a_decoy(media: Media) -> None:
    _found(media, [*cd(media.decoy_iso, "cd0", IDE0), *cd(media.rescue, "cd1", IDE1)], "cdrom", "ata_piix")


def test_cd_on_ahci_after_a_decoy(media: Media) -> None:
    devices = ["-device", "ich9-ahci,id=ahci", *cd(media.decoy_iso, "cd0", "ide-cd,bus=ahci.0"),
               *cd(media.rescue, "cd1", "ide-cd,bus=ahci.1")]  # fmt: skip
    report = _found(media, devices, "cdrom", "ahci")
    assert "ahci" in report["loaded"]


def test_scsi_cd_on_lsi_after_a_decoy(media: Media) -> None:
    devices = ["-device", "lsi53c895a,id=scsi0", *cd(media.decoy_iso, "cd0", "scsi-cd,bus=scsi0.0,scsi-id=0"),
               *cd(media.rescue, "cd1", "scsi-cd,bus=scsi0.0,scsi-id=1")]  # fmt: skip
    report = _found(media, devices, "cdrom", "sym53c8xx")
    assert "sym53c8xx" in report["loaded"]


def test_the_iso_on_a_usb_stick_after_a_decoy_cd(media: Media) -> None:
    # CD drives are looked at before USB disks: the decoy CD comes first whatever sdX is
    devices = [*cd(media.decoy_iso, "cd0", IDE0), *XHCI, *usb_stick(media.rescue, "u0")]
    report = _found(media, devices, "usb", "usb-storage")
    assert {"usb_storage", "xhci_pci"} <= set(report["loaded"]), report["loaded"]
    assert report["media"]["path"] == "/run/initrd-composer/media/usb0/data"


def test_only_decoys_fail_with_no_marker_within_the_timeout(media: Media) -> None:
    devices = [*cd(None, "cd0", IDE0), *cd(media.decoy_iso, "cd1", IDE1),
               *XHCI, *usb_stick(media.decoy_fat, "u0")]  # fmt: skip
    report, lines = _boot(media.image, devices, 5)
    section = report["media"]
    assert not section["ok"] and section["reason"] == "no-marker", section
    # every decoy was mounted (isofs, vfat and its code pages loaded on demand) and refused,
    # and the empty drive said so
    error = section["error"]
    iso = re.search(rf"/dev/(sr\d+) iso9660 'RESCUE': {NO_MARKER}", error)
    empty = re.search(r"/dev/(sr\d+): no medium", error)
    assert iso and empty and iso[1] != empty[1], error
    assert re.search(rf"/dev/sd[a-z]+ vfat 'RESCUE': {NO_MARKER}", error), error
    (attempt,) = section["attempts"]
    assert 5 <= attempt["seconds"] < 5 + 2, attempt  # waited media_timeout=, polling, then gave up
    assert section["source"] == "by marker" and section["kind"] == "removable", section
    refused = {c["device"] for c in section["data"]["candidates"]}  # the refusals reach the report
    assert iso[1] in "".join(refused) and empty[1] in "".join(refused), section["data"]
    assert any(line.startswith("stage: media failed ") for line in lines)
