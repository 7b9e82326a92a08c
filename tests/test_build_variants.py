"""Builds from unusual kernels: compressed modules, no builtin.modinfo, a kernel config
that lacks the chosen decompressor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from module_db.kernel_modules import KernelModules
from tests.image_fixtures import EPOCH, build, compose, fake_kernel, read_built
from tests.kernel_fixtures import module_bytes, plain_module_name, recompress_modules

pytest_plugins = ("tests.image_fixtures",)


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".zst"])
def test_compressed_modules_are_unpacked_or_kept(
    suffix: str, tmp_path: Path, kernel: tuple[str, Path], kernel_modules: KernelModules, build_cache: Path
) -> None:
    moddir = fake_kernel(tmp_path / "root", kernel_modules, kernel[1])
    recompress_modules(moddir, suffix)  # whatever the kernel's own modules are
    compressed = Path(f"{moddir / plain_module_name(kernel_modules.deps['ahci'].path)}{suffix}")
    assert compressed.is_file()
    image = build(["--kernel", str(moddir)], tmp_path / "u.img", build_cache)
    parsed = image.parsed()
    ahci = image.manifest.modules["ahci"]
    assert ahci.path.endswith("ahci.ko")
    packed = parsed.read(f"usr/lib/modules/{kernel[0]}/{ahci.path}")
    assert packed == module_bytes(kernel[1] / kernel_modules.deps["ahci"].path)
    assert packed.startswith(b"\x7fELF")
    kept = build(["--kernel", str(moddir), "--keep-compressed-modules"], tmp_path / "k.img", build_cache)
    assert kept.manifest.modules["ahci"].path.endswith("ahci.ko" + suffix)
    assert kept.parsed().read(kept.module_path("ahci")) == compressed.read_bytes()


def test_kernel_without_builtin_modinfo(
    tmp_path: Path, kernel: tuple[str, Path], kernel_modules: KernelModules, build_cache: Path
) -> None:
    moddir = fake_kernel(tmp_path / "old", kernel_modules, kernel[1])
    assert not (moddir / "modules.builtin.modinfo").exists()
    old = build(["--kernel", str(moddir)], tmp_path / "old.img", build_cache)
    assert old.manifest.builtin and not old.manifest.builtin_aliases
    shutil.copyfile(kernel[1] / "modules.builtin.modinfo", moddir / "modules.builtin.modinfo")
    new = build(["--kernel", str(moddir)], tmp_path / "new.img", build_cache)
    assert new.manifest.builtin == old.manifest.builtin
    assert any(a.module == "unix" for a in new.manifest.builtin_aliases)


def test_compressor_the_kernel_lacks_is_refused(
    tmp_path: Path, kernel: tuple[str, Path], kernel_modules: KernelModules, build_cache: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    moddir = fake_kernel(tmp_path / "root", kernel_modules, kernel[1])
    renamed = moddir.with_name("6.1.0-99-notzstd")  # no /boot/config-* of that name
    moddir.rename(renamed)
    (renamed / "config").write_text(
        "CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\n# CONFIG_RD_ZSTD is not set\nCONFIG_RD_XZ=y\n"
    )
    out = tmp_path / "refused.img"
    assert compose(["--kernel", str(renamed), "-o", str(out)], build_cache) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("compose-initrd: error: ") and "CONFIG_RD_ZSTD" in err[0], err
    assert err[1].startswith("compose-initrd: hint: ") and "gzip" in err[1]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    assert compose(["--kernel", str(renamed), "--compress", "gzip", "-o", str(out)], build_cache, EPOCH) == 0
    manifest = json.loads(read_built(out).parsed().read("usr/lib/initrd-composer/image.json"))
    assert manifest["kernel"] == "6.1.0-99-notzstd"
