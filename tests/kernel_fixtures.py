"""Real-kernel fixtures: the kernel the suite tests against, chosen on purpose, reading and
writing its module files whatever their compression, and copies with compressed modules.

The kernel: INITRD_COMPOSER_TEST_KERNEL=VERSION when set; else the one Debian's
`linux-image-amd64` metapackage depends on, when that is installed; else the newest
installed kernel with both /lib/modules/V/modules.dep and /boot/vmlinuz-V (else, on a
machine without any /boot/vmlinuz, the newest with modules.dep). Not "whatever is newest":
a second kernel installed beside Debian's (an upgrade's, a test kernel) must not change
what the suite tests.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zstandard

from initrd_composer.errors import ComposeError
from initrd_composer.runner import run

KERNEL_ENV = "INITRD_COMPOSER_TEST_KERNEL"
METAPACKAGE = "linux-image-amd64"
COMPRESSED_SUFFIXES = (".xz", ".zst", ".gz")
MODULE_SUFFIXES = (".ko", *(".ko" + s for s in COMPRESSED_SUFFIXES))


class KernelChoiceError(Exception):
    """The kernel to test cannot be chosen (an unknown version asked for, none installed)."""


@dataclass(frozen=True)
class KernelChoice:
    version: str
    moddir: Path  # ROOT/lib/modules/VERSION (or usr/lib/modules)
    why: str  # how it was chosen, for the report header


def version_sort_key(version: str) -> list[tuple[int, int | str]]:
    """Digit runs compare as numbers (6.10 > 6.9, 6.1.0-57 > 6.1.0-9), the rest as text."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[^\d.\-+~_]+", version)]


def installed_kernels(root: Path = Path("/")) -> dict[str, Path]:
    """version -> modules directory, for every ROOT/{lib,usr/lib}/modules/V with a modules.dep,
    oldest first."""
    found: dict[str, Path] = {}
    for base in ("lib/modules", "usr/lib/modules"):
        for dep in sorted((root / base).glob("*/modules.dep")):
            found.setdefault(dep.parent.name, dep.parent)
    return {v: found[v] for v in sorted(found, key=version_sort_key)}


def versions_in_depends(depends: str) -> list[str]:
    """Kernel versions a metapackage's Depends names, in order:
    'linux-image-6.1.0-57-amd64 (= 6.1.192-3)' -> ['6.1.0-57-amd64']."""
    found: list[str] = []
    for alternative in re.split(r"[,|]", depends):
        package = alternative.strip().split(" ")[0].split(":")[0]
        if package.startswith("linux-image-"):
            version = package.removeprefix("linux-image-").removesuffix("-unsigned")
            if version[:1].isdigit():
                found.append(version)
    return found


def metapackage_depends(package: str = METAPACKAGE) -> str | None:
    """The Depends of `package` when dpkg says it is installed, else None."""
    try:
        proc = run(["dpkg-query", "-W", "-f=${Status}\t${Depends}", package], check=False)
    except ComposeError:  # no dpkg-query: not a Debian machine
        return None
    status, _tab, depends = proc.stdout.decode().partition("\t")
    if proc.returncode != 0 or status != "install ok installed":
        return None
    return depends


def choose_kernel(requested: str | None, depends: str | None, root: Path = Path("/")) -> KernelChoice:
    """The rule in the module docstring; `requested` is the environment variable's value,
    `depends` the metapackage's Depends (None: not installed)."""
    installed = installed_kernels(root)
    listing = ", ".join(installed) or "none"
    if requested:
        if requested not in installed:
            raise KernelChoiceError(
                f"{KERNEL_ENV}={requested}: no {root / 'lib/modules' / requested / 'modules.dep'}; "
                f"installed are {listing}"
            )
        return KernelChoice(requested, installed[requested], f"{KERNEL_ENV}={requested}")
    if depends is not None:
        wanted = versions_in_depends(depends)
        for version in wanted:
            if version in installed:
                return KernelChoice(version, installed[version], f"{METAPACKAGE} depends on it")
        raise KernelChoiceError(
            f"{METAPACKAGE} is installed but none of the kernels it depends on ({depends!r}) has "
            f"modules installed (installed are {listing}); set {KERNEL_ENV}=VERSION"
        )
    if not installed:
        raise KernelChoiceError("no kernel installed: scripts/setup installs linux-image-amd64")
    bootable = [v for v in installed if (root / "boot" / f"vmlinuz-{v}").is_file()]
    if bootable:
        newest = bootable[-1]
        return KernelChoice(newest, installed[newest], "the newest with modules and /boot/vmlinuz")
    newest = list(installed)[-1]
    return KernelChoice(newest, installed[newest], "the newest with modules (no /boot/vmlinuz-V at all)")


def chosen_kernel(environ: Mapping[str, str] = os.environ) -> KernelChoice:
    """The kernel this test session uses (see the module docstring)."""
    return choose_kernel(environ.get(KERNEL_ENV) or None, metapackage_depends())


def vmlinuz_release(vmlinuz: Path) -> str:
    """The release (`uname -r`) an x86 bzImage will report: the boot protocol header's
    kernel_version string (its offset, at 0x20E, counts from 0x200)."""
    with vmlinuz.open("rb") as f:
        head = f.read(0x10000)
    assert head[0x202:0x206] == b"HdrS", f"{vmlinuz}: not a bzImage"
    start = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    return head[start : head.index(b"\0", start)].decode().split(" ", 1)[0]


# -- module files, compressed or not ----------------------------------------------------


def plain_module_name(path: str) -> str:
    """'kernel/x/e1000.ko.xz' -> 'kernel/x/e1000.ko' (what an unpacking build stores)."""
    for suffix in COMPRESSED_SUFFIXES:
        if path.endswith(".ko" + suffix):
            return path.removesuffix(suffix)
    return path


def is_module_file(name: str) -> bool:
    return name.endswith(MODULE_SUFFIXES)


def compress_module(data: bytes, suffix: str) -> bytes:
    """`data` as a module file named *.ko`suffix` holds it ('' for a plain .ko).

    xz with CRC32 checks: the kernel's own module decompressor wants them, as kmod's tools
    and the kernel's `make modules_install` write them."""
    if suffix == ".xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=0)
    if suffix == ".zst":
        return zstandard.ZstdCompressor(level=1).compress(data)
    if suffix == ".gz":
        return gzip.compress(data, mtime=0)
    assert suffix == "", suffix
    return data


def module_suffix(path: Path | str) -> str:
    """The compression suffix of a module file name ('' for .ko)."""
    name = str(path)
    assert is_module_file(name), name
    return next((s for s in COMPRESSED_SUFFIXES if name.endswith(".ko" + s)), "")


def module_bytes(path: Path) -> bytes:
    """A module file's ELF bytes, decompressed by its suffix (with the standard libraries,
    not the product's reader)."""
    raw = path.read_bytes()
    suffix = module_suffix(path)
    if suffix == ".xz":
        return lzma.decompress(raw)
    if suffix == ".zst":
        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    if suffix == ".gz":
        return gzip.decompress(raw)
    return raw


def write_module(path: Path, data: bytes) -> None:
    """Write ELF bytes to a module file, compressed as its name says."""
    path.write_bytes(compress_module(data, module_suffix(path)))


def _rename_dep_word(word: str, suffix: str) -> str:
    colon = ":" if word.endswith(":") else ""
    bare = word.removesuffix(":")
    return plain_module_name(bare) + suffix + colon if is_module_file(bare) else word


def recompress_modules(moddir: Path, suffix: str) -> None:
    """Rewrite every module file under moddir as *.ko`suffix` ('' = uncompressed), whatever
    it was, and rename the paths in modules.dep to match (a small fake kernel's own index)."""
    for path in sorted(p for p in moddir.rglob("*") if p.is_file() and is_module_file(p.name)):
        target = path.with_name(Path(plain_module_name(path.name)).name + suffix)
        data = module_bytes(path)
        path.unlink()
        target.write_bytes(compress_module(data, suffix))
    dep = moddir / "modules.dep"
    lines = [" ".join(_rename_dep_word(w, suffix) for w in ln.split()) for ln in dep.read_text().splitlines()]
    dep.write_text("\n".join(lines) + "\n")


def compressed_copy(version: str, moddir: Path, base: Path, suffix: str) -> Path:
    """base/lib/modules/VERSION with every module (plain or compressed) rewritten as
    *.ko`suffix`, then `depmod -b base` for its indexes."""
    dest = base / "lib" / "modules" / version
    jobs: list[tuple[Path, Path]] = []
    for dirpath, _dirs, files in os.walk(moddir):
        rel = Path(dirpath).relative_to(moddir)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            src = Path(dirpath) / name
            if is_module_file(name):
                jobs.append((src, dest / rel / (Path(plain_module_name(name)).name + suffix)))
            elif not name.startswith("modules.") or name in ("modules.order", "modules.builtin",
                                                             "modules.builtin.modinfo"):
                shutil.copy2(src, dest / rel / name)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda j: j[1].write_bytes(compress_module(module_bytes(j[0]), suffix)), jobs))
    run(["depmod", "-b", str(base), version])
    return dest
