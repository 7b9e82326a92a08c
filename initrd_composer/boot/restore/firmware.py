"""The firmware that will boot the restored disks is this machine's, not the source's.

A saved machine that booted BIOS GRUB from its disk's MBR, restored on a machine whose
firmware started the rescue system with UEFI, comes back with every file verified and still
does not start: UEFI firmware without legacy boot (a CSM) never runs an MBR's code. So the
plan refuses it before the first write, and the reason says what the saved system has for
UEFI (GRUB's x86_64-efi modules, an EFI system partition) and what to do instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from initrd_composer.boot.restore_set.manifest import Manifest

EFI_FIRMWARE = Path("/sys/firmware/efi")  # present when the kernel was started by UEFI
UEFI_GRUB = "/usr/lib/grub/x86_64-efi"  # grub-efi-amd64-bin: what grub-install --target=x86_64-efi needs
ESP_MOUNTS = ("/boot/efi", "/efi")


def started_by_uefi(efi: Path = EFI_FIRMWARE) -> bool:
    return efi.is_dir()


def system_has(manifest: Manifest, layout: Mapping[str, Any], path: str) -> bool:
    """Whether the saved system holds `path` (absolute), in whichever archive is mounted
    where it lies (/usr may be a filesystem of its own)."""
    archives = {a.name: a for a in manifest.archives}
    mounts = [(str(fs.get("mountpoint") or ""), str(fs["archive"])) for fs in layout.get("filesystems", [])
              if fs.get("archive") in archives and str(fs.get("mountpoint") or "").startswith("/")]
    mounts.sort(key=lambda m: len(m[0]), reverse=True)  # the deepest mount point holding `path`
    for mountpoint, archive in mounts:
        base = mountpoint.rstrip("/") + "/"
        if path == mountpoint or path.startswith(base):
            rel = path[len(base):] or "."
            return any(f.path == rel for f in archives[archive].files)
    return False


def bios_source_refusal(
    layout: Mapping[str, Any], manifest: Manifest, target_uefi: bool
) -> tuple[str, str] | None:
    """(reason, hint) when the saved machine's BIOS GRUB cannot boot on this machine."""
    bootloader = layout.get("bootloader") or {}
    source_uefi = (bootloader.get("uefi") or {}).get("booted_uefi")
    if not target_uefi or not bootloader.get("bios_grub_disks") or source_uefi:
        return None  # nothing to boot by BIOS, or the source's own refusal (make_plan) says more
    grub = system_has(manifest, layout, UEFI_GRUB)
    esp = any(str(fs.get("mountpoint") or "") in ESP_MOUNTS for fs in layout.get("filesystems", []))
    has = [
        f"GRUB for UEFI ({UEFI_GRUB})" if grub else f"no GRUB for UEFI (no {UEFI_GRUB}: grub-efi-amd64-bin)",
        "an EFI system partition" if esp else "no EFI system partition",
    ]
    return (
        "this machine started the rescue system with UEFI, and the saved machine booted BIOS GRUB "
        f"from its disk, which UEFI firmware without legacy boot does not start; its system has {has[0]} "
        f"and {has[1]}, and this release installs only BIOS GRUB",
        "boot the rescue medium in the firmware's legacy BIOS (CSM) mode and restore again",
    )
