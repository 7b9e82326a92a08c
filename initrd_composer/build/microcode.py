"""The early microcode segment: an uncompressed cpio placed before the main archive.

The x86 kernel looks for CPU microcode at kernel/x86/microcode/<Vendor>.bin in the first,
uncompressed cpio of the initrd, before it unpacks anything else; each vendor file is the
concatenation of the vendor's update files, as Debian's hooks build it.
"""

from __future__ import annotations

from pathlib import Path

from initrd_composer.errors import ComposeError
from initrd_composer.image.cpio_writer import cpio_bytes
from initrd_composer.image.entries import Entry, data_entry

EARLY_DIR = "kernel/x86/microcode"


def _firmware_dir(root: Path) -> Path:
    # On merged-/usr systems lib -> usr/lib; a sysroot may only have the usr/ copy.
    lib = root / "lib" / "firmware"
    return lib if lib.is_dir() else root / "usr" / "lib" / "firmware"


def _concatenate(files: list[Path]) -> bytes:
    parts = []
    for path in files:
        try:
            parts.append(path.read_bytes())
        except OSError as exc:
            raise ComposeError(f"cannot read microcode {path}: {exc.strerror}") from exc
    return b"".join(parts)


def vendor_microcode_files(root: Path = Path("/")) -> dict[str, list[Path]]:
    """Update files per vendor blob name, sorted by name; vendors with none are absent."""
    firmware = _firmware_dir(root)
    found = {
        "GenuineIntel.bin": sorted((firmware / "intel-ucode").glob("*")),
        "AuthenticAMD.bin": sorted((firmware / "amd-ucode").glob("microcode_amd*.bin")),
    }
    return {
        blob: [p for p in paths if p.is_file()]
        for blob, paths in found.items()
        if any(p.is_file() for p in paths)
    }


def microcode_entries(root: Path = Path("/")) -> list[Entry]:
    """The early segment's files (parents are added by the cpio writer); [] when no
    microcode is installed under `root`."""
    return [
        data_entry(f"{EARLY_DIR}/{blob}", _concatenate(files), origin="microcode")
        for blob, files in sorted(vendor_microcode_files(root).items())
    ]


def microcode_segment(root: Path = Path("/"), epoch: int = 0) -> bytes:
    """The uncompressed early cpio to write first in the image, or b"" when no microcode
    is installed (then the image has no early segment)."""
    entries = microcode_entries(root)
    return cpio_bytes(entries, epoch) if entries else b""
