"""Boot loaders: GRUB in a disk's MBR and the bytes after it (core.img on MBR disks), and the
UEFI boot entries `efibootmgr -v` lists."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from initrd_composer.capture.layout import LayoutError

SECTOR = 512
# GRUB's boot.img carries the string "GRUB " (its error message prefix) inside its 440 code bytes.
GRUB_MARK = b"GRUB"
MBR_SIGNATURE = b"\x55\xaa"


def boot_sector(sector: bytes) -> dict[str, Any]:
    """What the first 512 bytes of a disk say: a GRUB boot sector or not, and their hash."""
    if len(sector) < SECTOR:
        raise LayoutError(f"boot sector: {len(sector)} bytes, expected {SECTOR}")
    code = sector[:440]  # the code area before the disk signature and the partition entries
    return {
        "grub": GRUB_MARK in code,
        "signature": sector[510:512] == MBR_SIGNATURE,
        "code_empty": not any(code),
        "sha256": hashlib.sha256(sector[:SECTOR]).hexdigest(),
    }


def gap_record(gap: bytes, disk_name: str) -> dict[str, Any]:
    """The bytes between the MBR and the first partition: on MBR disks GRUB's core.img, on
    GPT disks the GPT header and entries. Their size and hash, and the restore set file
    that holds them."""
    return {
        "offset_bytes": SECTOR,
        "size_bytes": len(gap),
        "sha256": hashlib.sha256(gap).hexdigest(),
        "empty": not any(gap),
        "file": gap_file_name(disk_name),
    }


def gap_file_name(disk_name: str) -> str:
    return f"disk-{disk_name.replace('/', '_')}-gap.bin"


def bios_boot_record(content: bytes, disk_name: str, number: int | None) -> dict[str, Any]:
    """A GPT BIOS boot partition holds GRUB's core.img but no filesystem, so no archive
    carries it: its size, hash and the restore set file with its bytes."""
    return {
        "size_bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "empty": not any(content),
        "file": f"disk-{disk_name.replace('/', '_')}-part{number}-bios-boot.bin",
    }


_BOOT_ENTRY = re.compile(r"^Boot([0-9A-Fa-f]{4})(\*?)\s+(.*)$")
_HD = re.compile(r"HD\((\d+),(GPT|MBR),([^,]+),(0x[0-9a-fA-F]+|\d+),(0x[0-9a-fA-F]+|\d+)\)")
_FILE = re.compile(r"(?<![A-Za-z])File\(([^)]*)\)")  # not FvFile(


def parse_efibootmgr(text: str) -> dict[str, Any]:
    """`efibootmgr -v`: BootCurrent, BootOrder and each Boot#### entry with its label, the
    partition it points at (GPT partition GUID) and the loader path. efibootmgr 17 writes
    "label<TAB>HD(...)/File(\\EFI\\debian\\shimx64.efi)", 18 drops the File() around the path."""
    current = None
    order: list[str] = []
    entries = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith("BootCurrent:"):
            current = line.split(":", 1)[1].strip()
            continue
        if line.startswith("BootOrder:"):
            order = [n for n in line.split(":", 1)[1].strip().split(",") if n]
            continue
        m = _BOOT_ENTRY.match(line)
        if m is None:
            continue
        label, _, path = m.group(3).partition("\t")
        if not path:  # some versions separate with spaces only; the device path starts at a known node
            dm = re.search(r"\s((?:HD|PciRoot|VenHw|BBS|FvVol|MAC|Uri)\(.*)$", m.group(3))
            label, path = (m.group(3)[: dm.start()], dm.group(1)) if dm else (m.group(3), "")
        hd = _HD.search(path)
        loader = None
        fm = _FILE.search(path)
        if fm:
            loader = fm.group(1)
        elif hd and path[hd.end() : hd.end() + 1] == "/":
            loader = path[hd.end() + 1 :].split("/", 1)[0] or None
        entries.append(
            {
                "number": m.group(1).upper(),
                "active": m.group(2) == "*",
                "label": label.strip(),
                "partition": int(hd.group(1)) if hd else None,
                "partition_scheme": hd.group(2) if hd else None,
                "partuuid": hd.group(3).lower() if hd and hd.group(2) == "GPT" else None,
                "loader": loader,
                "device_path": path.strip(),
            }
        )
    if current is None and not entries:
        raise LayoutError(f"efibootmgr -v: no boot entries: {text.strip()[:200]!r}")
    return {"current": current, "order": [n.upper() for n in order], "entries": entries}
