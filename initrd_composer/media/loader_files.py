"""Where the distribution keeps the boot loaders the media carry, and which package has them.

The media are built from the system's own signed binaries (Debian: shim-signed,
grub-efi-amd64-signed, isolinux, pxelinux, syslinux-common) rather than from loaders of
our own, so Secure Boot trusts them and security updates reach the rescue media.  `root`
is injectable so tests can take a file away.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from initrd_composer.errors import ComposeError

# name -> (path under root, Debian package)
LOADERS: dict[str, tuple[str, str]] = {
    "isolinux.bin": ("usr/lib/ISOLINUX/isolinux.bin", "isolinux"),
    "isohdpfx.bin": ("usr/lib/ISOLINUX/isohdpfx.bin", "isolinux"),
    "ldlinux.c32": ("usr/lib/syslinux/modules/bios/ldlinux.c32", "syslinux-common"),
    "menu.c32": ("usr/lib/syslinux/modules/bios/menu.c32", "syslinux-common"),
    "libutil.c32": ("usr/lib/syslinux/modules/bios/libutil.c32", "syslinux-common"),
    "libcom32.c32": ("usr/lib/syslinux/modules/bios/libcom32.c32", "syslinux-common"),
    "pxelinux.0": ("usr/lib/PXELINUX/pxelinux.0", "pxelinux"),
    "lpxelinux.0": ("usr/lib/PXELINUX/lpxelinux.0", "pxelinux"),
    "shimx64.efi": ("usr/lib/shim/shimx64.efi.signed", "shim-signed"),
    "mmx64.efi": ("usr/lib/shim/mmx64.efi.signed", "shim-helpers-amd64-signed"),
    # GRUB's CD image finds the disc by /.disk/info and reads /boot/grub/grub.cfg from it.
    "gcdx64.efi": ("usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed", "grub-efi-amd64-signed"),
    # GRUB's network image reads $prefix/grub.cfg from the TFTP server it came from.
    "grubnetx64.efi": ("usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed", "grub-efi-amd64-signed"),
}


@dataclass(frozen=True)
class LoaderFiles:
    root: Path = Path("/")

    def path(self, name: str) -> Path:
        rel, package = LOADERS[name]
        found = self.root / rel
        if not found.is_file():
            raise ComposeError(
                f"boot loader file {found} is missing (needed for {name})",
                f"install it: apt-get install {package}",
            )
        return found

    def require(self, *names: str) -> dict[str, Path]:
        """All of `names`, or an error naming the first one missing: checked before any
        output is written, so a missing loader never leaves a medium half-made."""
        return {name: self.path(name) for name in names}
