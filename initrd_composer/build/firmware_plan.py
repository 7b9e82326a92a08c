"""Firmware the packed modules name, found the way the kernel's loader looks for it."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from initrd_composer.errors import ComposeError
from initrd_composer.image.compression import DecompressError, decompress_any
from initrd_composer.image.entries import Entry, data_entry, file_entry


@dataclass(frozen=True)
class FirmwarePlan:
    entries: tuple[Entry, ...]
    present: tuple[str, ...]  # names found (image paths under lib/firmware)
    missing: tuple[str, ...]  # names some module asks for that are not installed


def firmware_search_dirs(root: Path, kernel_version: str) -> list[Path]:
    """The kernel's own order (drivers/base/firmware_loader): updates first, versioned first."""
    base = root / "lib" / "firmware"
    return [base / "updates" / kernel_version, base / "updates", base / kernel_version, base]


def _find(name: str, dirs: Sequence[Path]) -> list[tuple[str, Path]]:
    """(name, file) for a firmware name; modinfo names may be globs (e.g. 'rtl_nic/*')."""
    if any(ch in name for ch in "*?["):
        hits: dict[str, Path] = {}
        for base in dirs:
            parent = (base / name).parent
            if not parent.is_dir():
                continue
            for cand in sorted(parent.iterdir()):
                rel = str(cand.relative_to(base))
                plain = rel.removesuffix(".xz").removesuffix(".zst")
                if cand.is_file() and fnmatch.fnmatchcase(plain, name):
                    hits.setdefault(plain, cand)
        return sorted(hits.items())
    for base in dirs:
        for suffix in ("", ".xz", ".zst"):
            cand = base / (name + suffix)
            if cand.is_file():
                return [(name, cand)]
    return []


def _plain_entry(name: str, host: Path) -> Entry:
    """Compressed firmware is unpacked: the kernel may lack the decompressor, and the
    image is compressed as a whole anyway."""
    path = f"lib/firmware/{name}"
    if host.suffix not in (".xz", ".zst"):
        return file_entry(path, host, mode=0o644, origin="firmware")
    try:
        data = decompress_any(host.read_bytes(), str(host))
    except DecompressError as exc:  # a truncated stream too: never a short firmware file
        hint = "reinstall its package"
        raise ComposeError(f"corrupt compressed firmware {host}: {exc.detail}", hint) from None
    return data_entry(path, data, origin="firmware")


def plan_firmware(wanted: Mapping[str, Iterable[str]], dirs: Sequence[Path]) -> FirmwarePlan:
    """`wanted`: module -> firmware names from its modinfo."""
    by_name: dict[str, list[str]] = {}
    for module, names in wanted.items():
        for name in names:
            by_name.setdefault(name, []).append(module)
    entries: dict[str, Entry] = {}
    present: list[str] = []
    missing: list[str] = []
    for name in sorted(by_name):
        found = _find(name, dirs)
        if not found:
            missing.append(name)
            continue
        for plain, host in found:
            if plain not in entries:
                entries[plain] = _plain_entry(plain, host)
                present.append(plain)
    return FirmwarePlan(
        entries=tuple(entries[k] for k in sorted(entries)),
        present=tuple(sorted(present)),
        missing=tuple(missing),
    )
