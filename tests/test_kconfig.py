from __future__ import annotations

from pathlib import Path

import pytest

from initrd_composer.build.kconfig import (
    KernelConfig,
    check_compressor,
    kernel_config_candidates,
    load_kernel_config,
    parse_kernel_config,
)
from initrd_composer.errors import ComposeError

KVER = "6.1.0-99-amd64"
CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_CC_VERSION_TEXT="gcc (Debian 12.2.0-14) 12.2.0"
CONFIG_BLK_DEV_INITRD=y
CONFIG_INITRAMFS_SOURCE=""
CONFIG_RD_GZIP=y
CONFIG_RD_XZ=m
# CONFIG_RD_ZSTD is not set
CONFIG_NR_CPUS=8192
"""


def _fake_config(text: str = CONFIG) -> KernelConfig:
    return KernelConfig(KVER, Path(f"/boot/config-{KVER}"), parse_kernel_config(text))


def test_parse_values() -> None:
    options = parse_kernel_config(CONFIG)
    assert options["CONFIG_CC_VERSION_TEXT"] == "gcc (Debian 12.2.0-14) 12.2.0"
    assert options["CONFIG_INITRAMFS_SOURCE"] == ""
    assert options["CONFIG_RD_GZIP"] == "y"
    assert options["CONFIG_RD_ZSTD"] == "n"
    assert options["CONFIG_NR_CPUS"] == "8192"
    assert "CONFIG_RD_LZ4" not in options


def test_refuses_zstd_when_kernel_lacks_it() -> None:
    with pytest.raises(ComposeError) as info:
        check_compressor(_fake_config(), "zstd")
    assert info.value.message == (
        f"kernel {KVER} cannot decompress zstd initrds: CONFIG_RD_ZSTD is not set (per /boot/config-{KVER})"
    )
    assert info.value.hint == "choose --compress xz|gzip|none"


def test_accepts_supported_compressions() -> None:
    config = _fake_config()
    for name in ("xz", "gzip", "none"):
        assert check_compressor(config, name) is None


def test_refuses_everything_without_initrd_support() -> None:
    config = _fake_config(CONFIG.replace("CONFIG_BLK_DEV_INITRD=y", ""))
    with pytest.raises(ComposeError, match="cannot load an initrd: CONFIG_BLK_DEV_INITRD"):
        check_compressor(config, "none")


def test_missing_config_is_a_warning() -> None:
    warning = check_compressor(None, "zstd", KVER)
    assert warning is not None
    assert f"no .config found for kernel {KVER}" in warning
    assert "zstd" in warning


def test_load_prefers_boot_config(tmp_path: Path) -> None:
    moddir = tmp_path / "lib/modules" / KVER
    (moddir / "build").mkdir(parents=True)
    (moddir / "build/.config").write_text("CONFIG_RD_LZ4=y\n")
    found = load_kernel_config(KVER, moddir, root=tmp_path)
    assert found is not None
    assert found.path == moddir / "build/.config"
    assert found.enabled("CONFIG_RD_LZ4")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"config-{KVER}").write_text(CONFIG)
    found = load_kernel_config(KVER, moddir, root=tmp_path)
    assert found is not None
    assert found.path == tmp_path / "boot" / f"config-{KVER}"
    assert not found.enabled("CONFIG_RD_ZSTD")


def test_config_beside_modules_dir(tmp_path: Path) -> None:
    (tmp_path / "config").write_text(CONFIG)
    found = load_kernel_config(KVER, tmp_path, root=tmp_path / "nowhere")
    assert found is not None and found.path == tmp_path / "config"
    assert kernel_config_candidates(KVER, tmp_path, tmp_path / "r")[0] == (
        tmp_path / "r/boot" / f"config-{KVER}"
    )


def test_none_found(tmp_path: Path) -> None:
    assert load_kernel_config(KVER, tmp_path, root=tmp_path) is None


def test_installed_kernel_supports_every_offered_compression(kernel: tuple[str, Path]) -> None:
    # The kernel under test: Debian's kernel package ships /boot/config-VERSION.
    config = load_kernel_config(kernel[0], kernel[1])
    assert config is not None, f"no /boot/config-{kernel[0]} (nor {kernel[1]}/config)"
    for name in ("zstd", "xz", "gzip", "none"):
        assert check_compressor(config, name) is None
