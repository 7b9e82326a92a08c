"""Real-kernel fixtures: the installed Debian kernel, and copies with compressed modules."""

from __future__ import annotations

import lzma
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zstandard

from initrd_composer.build.kernel_locate import installed_versions
from initrd_composer.runner import run


def installed_kernel() -> tuple[str, Path] | None:
    """The newest installed kernel with modules (Debian's 6.1 on the reference machine)."""
    versions = installed_versions(Path("/"))
    if not versions:
        return None
    version = versions[-1]
    return version, Path("/lib/modules") / version


def _compress_one(src: Path, dst_base: Path, suffix: str) -> None:
    data = src.read_bytes()
    if suffix == ".xz":
        # The kernel's own module decompressor wants CRC32 checks, like kmod's tools write.
        out = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=0)
    else:
        out = zstandard.ZstdCompressor(level=1).compress(data)
    Path(str(dst_base) + suffix).write_bytes(out)


def compressed_copy(version: str, moddir: Path, base: Path, suffix: str) -> Path:
    """base/lib/modules/VERSION with every .ko compressed as `suffix`, then depmod -b base."""
    dest = base / "lib" / "modules" / version
    jobs: list[tuple[Path, Path]] = []
    for dirpath, _dirs, files in os.walk(moddir):
        rel = Path(dirpath).relative_to(moddir)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            src = Path(dirpath) / name
            if name.endswith(".ko"):
                jobs.append((src, dest / rel / name))
            elif not name.startswith("modules.") or name in ("modules.order", "modules.builtin",
                                                             "modules.builtin.modinfo"):
                shutil.copy2(src, dest / rel / name)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda j: _compress_one(j[0], j[1], suffix), jobs))
    run(["depmod", "-b", str(base), version])
    return dest
