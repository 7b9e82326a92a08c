"""Whole-image fixtures: images built through the real CLI, once per session, and small
fake kernels (a handful of real modules plus their own modules.dep) for error and
firmware cases. Test modules load this with `pytest_plugins = ("tests.image_fixtures",)`
and import its helpers too, so pytest must not try to rewrite it: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from initrd_composer.cli import main as cli
from initrd_composer.image.reader import InitrdImage, open_image
from module_db.contract import MANIFEST_PATH, ImageManifest
from module_db.kernel_modules import KernelModules
from tests.kernel_fixtures import installed_kernels, version_sort_key

EPOCH = 1_700_000_000
# QEMU's e1000 (82540EM) and e1000e (82574L), as the kernel reports them in sysfs.
E1000_MODALIAS = "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"
E1000E_MODALIAS = "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"
IGB_MODALIAS = "pci:v00008086d000010C9sv00008086sd0000A03Cbc02sc00i00"
# Roots of the small fake kernel: a storage stack, two NICs (e100 names firmware files).
FAKE_ROOTS = ("ahci", "e1000", "e100")


@dataclass(frozen=True)
class BuiltImage:
    """An image file and what its manifest says."""

    path: Path
    version: str
    manifest: ImageManifest

    def parsed(self) -> InitrdImage:
        """The image parsed afresh (not kept: the main segment is ~190 MB decompressed)."""
        return open_image(self.path)

    def module_path(self, name: str) -> str:
        """Where a packed module lies in the image (lib -> usr/lib on merged /usr)."""
        return f"usr/lib/modules/{self.version}/{self.manifest.modules[name].path}"


@contextlib.contextmanager
def build_env(cache: Path, epoch: int | None = EPOCH) -> Iterator[None]:
    """SOURCE_DATE_EPOCH and a private XDG cache for the duration of one build."""
    wanted = {"XDG_CACHE_HOME": str(cache), "SOURCE_DATE_EPOCH": None if epoch is None else str(epoch)}
    saved = {key: os.environ.get(key) for key in wanted}
    try:
        for key, value in wanted.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def compose(argv: Sequence[str], cache: Path, epoch: int | None = EPOCH) -> int:
    """`compose-initrd ARGV` in this process, as the console script runs it."""
    with build_env(cache, epoch):
        return cli.main([str(a) for a in argv])


def read_built(path: Path) -> BuiltImage:
    image = open_image(path)
    manifest = ImageManifest.from_json(image.read(MANIFEST_PATH).decode(), f"{path}:{MANIFEST_PATH}")
    return BuiltImage(path=path, version=manifest.kernel, manifest=manifest)


def build(argv: Sequence[str], out: Path, cache: Path, epoch: int | None = EPOCH) -> BuiltImage:
    rc = compose([*argv, "-o", str(out)], cache, epoch)
    assert rc == 0, f"compose-initrd {' '.join(argv)} exited {rc}"
    return read_built(out)


def fake_sysfs(base: Path, nics: dict[str, str]) -> Path:
    """A /sys with class/net/IFACE/device/modalias per NIC (and a virtual lo, no device)."""
    (base / "class/net/lo").mkdir(parents=True, exist_ok=True)
    for iface, modalias in nics.items():
        device = base / "devices/pci0000:00" / iface
        device.mkdir(parents=True, exist_ok=True)
        (device / "modalias").write_text(modalias + "\n")
        (base / "class/net" / iface).mkdir(parents=True, exist_ok=True)
        os.symlink(device, base / "class/net" / iface / "device")
    return base


def fake_kernel(dest: Path, km: KernelModules, moddir: Path, roots: Sequence[str] = FAKE_ROOTS) -> Path:
    """dest/lib/modules/VERSION holding the real modules `roots` need (copied) and a
    modules.dep/.alias/.builtin of just those; named like the real kernel so its
    /boot/config is found. Returns the modules directory (for --kernel DIR)."""
    fake = dest / "lib" / "modules" / km.version
    fake.mkdir(parents=True)
    names = km.load_order(roots)
    dep_lines = []
    for name in names:
        entry = km.deps[name]
        (fake / entry.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(moddir / entry.path, fake / entry.path)
        dep_lines.append(f"{entry.path}: {' '.join(km.deps[d].path for d in entry.deps)}".rstrip())
    (fake / "modules.dep").write_text("\n".join(dep_lines) + "\n")
    aliases = [f"alias {a.pattern} {a.module}\n" for a in km.aliases if a.module in names]
    (fake / "modules.alias").write_text("".join(aliases))
    shutil.copyfile(moddir / "modules.builtin", fake / "modules.builtin")
    return fake


def headline_pattern(version: str, installed: Sequence[str] | None = None) -> str:
    """The broadest `--kernel` pattern whose newest installed match is `version`: 'MAJOR.x'
    (the README's example) when no newer kernel of that major is installed, else
    'MAJOR.MINOR.*', else the version itself."""
    versions = list(installed_kernels()) if installed is None else sorted(installed, key=version_sort_key)
    major, minor = [*version.split("."), ""][:2]
    for pattern, prefix in ((f"{major}.x", f"{major}."), (f"{major}.{minor}.*", f"{major}.{minor}.")):
        matches = [v for v in versions if v.startswith(prefix)]
        if matches and matches[-1] == version:
            return pattern
    return version


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One XDG cache for every build of the session: the first build fills it."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(scope="session")
def all_nics_image(
    tmp_path_factory: pytest.TempPathFactory, build_cache: Path, kernel: tuple[str, Path]
) -> BuiltImage:
    """`compose-initrd --kernel 6.x --all-nics -o initrd.img`, the headline build (with a
    cold cache: later builds of the same image, with a warm one, must give the same bytes).
    With a newer 6.x installed beside the kernel under test, the pattern narrows (6.1.*) so
    that it still names the kernel under test (see headline_pattern)."""
    out = tmp_path_factory.mktemp("all-nics") / "initrd.img"
    pattern = headline_pattern(kernel[0])
    built = build(["--kernel", pattern, "--all-nics"], out, build_cache)
    assert built.version == kernel[0], f"--kernel {pattern} chose {built.version}"
    return built


@pytest.fixture(scope="session")
def host_nic_image(
    tmp_path_factory: pytest.TempPathFactory, build_cache: Path, kernel: tuple[str, Path]
) -> BuiltImage:
    """Without --all-nics, on a host whose only NIC (per a fake sysfs) is an e1000."""
    base = tmp_path_factory.mktemp("host-nic")
    sysfs = fake_sysfs(base / "sys", {"eth0": E1000_MODALIAS})
    return build(["--kernel", kernel[0], "--sys-root", str(sysfs)], base / "initrd.img", build_cache)


@pytest.fixture(scope="session")
def fake_kernel_dir(
    tmp_path_factory: pytest.TempPathFactory, kernel: tuple[str, Path], kernel_modules: KernelModules
) -> Path:
    """A pristine small fake kernel; tests that break it work on a copy (see fake_copy)."""
    return fake_kernel(tmp_path_factory.mktemp("fake-kernel"), kernel_modules, kernel[1])


def fake_copy(fake_kernel_dir: Path, dest: Path) -> Path:
    """A private copy of the fake kernel (dest/VERSION) to damage."""
    return Path(shutil.copytree(fake_kernel_dir, dest / fake_kernel_dir.name))


def loader_root_without(dest: Path, missing: str) -> Path:
    """A --loader-root holding every boot loader file the media need but `missing`."""
    from initrd_composer.media.loader_files import LOADERS  # noqa: PLC0415 - only these tests need it

    for name, (rel, _package) in LOADERS.items():
        if name != missing:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path("/") / rel, dest / rel)
    return dest
