from __future__ import annotations

from pathlib import Path

import pytest

from module_db.kernel_modules import KernelModules
from module_db.load import load_kernel_modules
from tests.kernel_fixtures import compressed_copy, installed_kernel


@pytest.fixture(scope="session")
def kernel() -> tuple[str, Path]:
    found = installed_kernel()
    if found is None:
        pytest.fail("no kernel installed: scripts/setup installs linux-image-amd64")
    return found


@pytest.fixture(scope="session")
def kernel_modules(kernel: tuple[str, Path]) -> KernelModules:
    return load_kernel_modules(kernel[1])


@pytest.fixture(scope="session", params=[".xz", ".zst"])
def compressed_kernel(
    request: pytest.FixtureRequest, kernel: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Path]:
    """(version, sysroot, moddir) of a copy of the kernel's modules compressed with xz or zstd."""
    suffix = str(request.param)
    base = tmp_path_factory.mktemp("kernel" + suffix.replace(".", "-"))
    moddir = compressed_copy(kernel[0], kernel[1], base, suffix)
    return kernel[0], base, moddir
