"""The kernel and initrd every medium places: built now, or an initrd built before.

One BootPayload is made per run and handed to the ISO, OBDR and PXE writers, which copy
its files byte for byte; its sha256 is what the verbs print and what the tests compare
across media.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from initrd_composer.errors import ComposeError
from initrd_composer.image.reader import open_image
from module_db.contract import MANIFEST_PATH, ImageManifest


@dataclass(frozen=True)
class BootPayload:
    kernel_version: str
    vmlinuz: Path
    initrd: Path
    initrd_sha256: str

    @property
    def initrd_size(self) -> int:
        return self.initrd.stat().st_size


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def initrd_kernel_version(initrd: Path) -> str:
    """The kernel an initrd built by compose-initrd is for (from its JSON contract)."""
    image = open_image(initrd)
    try:
        text = image.read(MANIFEST_PATH).decode()
    except ComposeError:
        raise ComposeError(
            f"{initrd} has no {MANIFEST_PATH}: not an image built by compose-initrd",
            "build one with `compose-initrd --kernel 6.x --all-nics -o initrd.img`",
        ) from None
    return ImageManifest.from_json(text, f"{initrd}:{MANIFEST_PATH}").kernel


def find_vmlinuz(version: str, root: Path, given: Path | None) -> Path:
    """--vmlinuz, else ROOT/boot/vmlinuz-VERSION (Debian's signed kernel lives there)."""
    candidates = [given] if given is not None else [
        root / "boot" / f"vmlinuz-{version}",
        root / "lib/modules" / version / "vmlinuz",
        root / "usr/lib/modules" / version / "vmlinuz",
    ]
    for cand in candidates:
        if cand.is_file():
            return cand
    where = given if given is not None else candidates[0]
    raise ComposeError(
        f"no kernel image {where} for kernel {version}",
        f"install linux-image-{version} or pass --vmlinuz FILE",
    )


def payload_from_files(initrd: Path, vmlinuz: Path | None, root: Path) -> BootPayload:
    """An initrd given with --initrd: checked to be ours, its kernel found beside it."""
    if not initrd.is_file():
        raise ComposeError(f"no such initrd: {initrd}", "build one first or drop --initrd to build now")
    version = initrd_kernel_version(initrd)
    kernel = find_vmlinuz(version, root, vmlinuz)
    return BootPayload(version, kernel, initrd, sha256_file(initrd))
