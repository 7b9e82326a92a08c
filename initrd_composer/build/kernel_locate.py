"""Turn --kernel (exact version, pattern, or modules directory) and --root into a modules dir."""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from initrd_composer.errors import ComposeError


@dataclass(frozen=True)
class KernelLocation:
    version: str
    moddir: Path  # the host path of lib/modules/VERSION
    root: Path  # sysroot the kernel belongs to ("/" for the running system)


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key comparing digit runs numerically: 6.10 > 6.9, 6.1.0-56 > 6.1.0-9."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.findall(r"\d+|[^\d.\-+~_]+", version)
    )


def installed_versions(root: Path) -> list[str]:
    """Kernel versions with a modules.dep under root, oldest first."""
    found: set[str] = set()
    for base in ("lib/modules", "usr/lib/modules"):
        moddir = root / base
        if not moddir.is_dir():
            continue
        for entry in moddir.iterdir():
            if (entry / "modules.dep").is_file():
                found.add(entry.name)
    return sorted(found, key=version_key)


def _moddir_for(root: Path, version: str) -> Path:
    for base in ("lib/modules", "usr/lib/modules"):
        cand = root / base / version
        if cand.is_dir():
            return cand
    return root / "lib/modules" / version


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """'6.x' and '6.1.*': 'x' or '*' stands for any remaining text of a component."""
    glob = re.sub(r"(?<![0-9a-z])x(?![0-9a-z])", "*", pattern)
    return re.compile(fnmatch.translate(glob))


def locate_kernel(spec: str | None, root: Path = Path("/")) -> KernelLocation:
    """Resolve the --kernel argument. None means the running kernel if installed, else the newest."""
    if spec and (os.sep in spec or spec.startswith(".")):
        moddir = Path(spec)
        if not moddir.is_dir():
            raise ComposeError(f"no such modules directory: {spec}", "give a version or a directory")
        return KernelLocation(version=moddir.resolve().name, moddir=moddir, root=root)
    versions = installed_versions(root)
    if not versions:
        where = root / "lib/modules"
        raise ComposeError(
            f"no kernel with modules is installed under {where}",
            "install one (apt-get install linux-image-amd64) or pass --root/--kernel DIR",
        )
    if spec is None:
        running = os.uname().release
        chosen = running if root == Path("/") and running in versions else versions[-1]
        return KernelLocation(chosen, _moddir_for(root, chosen), root)
    if spec in versions:
        return KernelLocation(spec, _moddir_for(root, spec), root)
    if any(ch in spec for ch in "*?[") or re.search(r"(?<![0-9a-z])x(?![0-9a-z])", spec):
        regex = _pattern_regex(spec)
        matches = [v for v in versions if regex.match(v)]
        if matches:
            newest = matches[-1]
            return KernelLocation(newest, _moddir_for(root, newest), root)
    raise ComposeError(
        f"unknown kernel {spec!r}: installed are {', '.join(versions)}",
        "pass an installed version, a pattern such as 6.x or 6.1.*, or a modules directory",
    )
