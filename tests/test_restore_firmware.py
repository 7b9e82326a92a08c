"""The restored disks boot with this machine's firmware: a saved machine that booted BIOS GRUB
is refused on a machine that started the rescue system with UEFI, before the plan, with what
its system has for UEFI named; on BIOS, or for a machine with no BIOS GRUB, nothing changes.
The manifests are real ones, written by the capture's set writer from small trees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.restore.firmware import UEFI_GRUB, bios_source_refusal, started_by_uefi, system_has
from initrd_composer.boot.restore_set.manifest import Manifest
from initrd_composer.capture.set_writer import write_set
from tests.test_restore_set_roundtrip import layout_of


def _machine(tmp_path: Path, *, efi_grub: bool, usr_apart: bool = False, esp: bool = False) -> tuple[
        Manifest, dict[str, Any]]:
    root, usr = tmp_path / "root", tmp_path / "usr"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "fstab").write_text("/dev/vda1 / ext4 defaults 0 1\n")
    grub_base = (usr if usr_apart else root / "usr") / "lib" / "grub"
    (grub_base / "i386-pc").mkdir(parents=True)
    (grub_base / "i386-pc" / "normal.mod").write_bytes(b"mod")
    if efi_grub:
        (grub_base / "x86_64-efi").mkdir()
        (grub_base / "x86_64-efi" / "normal.mod").write_bytes(b"mod")
    trees = [("root", root), *([("usr", usr)] if usr_apart else [])]
    if esp:
        (tmp_path / "esp" / "EFI").mkdir(parents=True)
        trees.append(("boot-efi", tmp_path / "esp"))
    layout = layout_of(trees)
    mounts = {"root": "/", "usr": "/usr", "boot-efi": "/boot/efi"}
    for fs in layout["filesystems"]:
        fs["mountpoint"] = mounts[fs["archive"]]
    layout["bootloader"] = {"bios_grub_disks": ["vda"], "uefi": {"booted_uefi": False}}
    return write_set(tmp_path / "set", trees, layout=layout), layout


def test_a_bios_machine_on_uefi_firmware_is_refused_naming_what_it_lacks(tmp_path: Path) -> None:
    manifest, layout = _machine(tmp_path, efi_grub=False)
    refusal = bios_source_refusal(layout, manifest, target_uefi=True)
    assert refusal is not None
    reason, hint = refusal
    assert "started the rescue system with UEFI" in reason and "booted BIOS GRUB" in reason
    assert f"no GRUB for UEFI (no {UEFI_GRUB}: grub-efi-amd64-bin)" in reason
    assert "no EFI system partition" in reason and "legacy BIOS (CSM)" in hint
    assert bios_source_refusal(layout, manifest, target_uefi=False) is None


def test_what_the_system_has_is_found_in_the_archive_mounted_there(tmp_path: Path) -> None:
    manifest, layout = _machine(tmp_path, efi_grub=True, usr_apart=True, esp=True)
    assert system_has(manifest, layout, UEFI_GRUB)  # in the usr archive, as lib/grub/x86_64-efi
    assert not system_has(manifest, layout, "/usr/lib/grub/arm64-efi")
    assert system_has(manifest, layout, "/etc/fstab")
    refusal = bios_source_refusal(layout, manifest, target_uefi=True)
    assert refusal is not None
    assert f"GRUB for UEFI ({UEFI_GRUB}) and an EFI system partition" in refusal[0]
    assert "installs only BIOS GRUB" in refusal[0]


@pytest.mark.parametrize("bootloader", [{}, {"bios_grub_disks": ["vda"], "uefi": {"booted_uefi": True}}])
def test_no_bios_grub_or_a_uefi_source_is_not_this_check(tmp_path: Path, bootloader: dict[str, Any]) -> None:
    manifest, layout = _machine(tmp_path, efi_grub=False)
    layout["bootloader"] = bootloader
    assert bios_source_refusal(layout, manifest, target_uefi=True) is None


def test_the_firmware_is_read_from_sysfs(tmp_path: Path) -> None:
    assert not started_by_uefi(tmp_path / "efi")
    (tmp_path / "efi").mkdir()
    assert started_by_uefi(tmp_path / "efi")
