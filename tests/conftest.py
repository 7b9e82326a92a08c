from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from initrd_composer.runner import run
from module_db.kernel_modules import KernelModules
from module_db.load import load_kernel_modules
from tests.kernel_fixtures import KernelChoice, KernelChoiceError, chosen_kernel, compressed_copy

# Fixture modules that test modules also import by name: rewritten (plain asserts explained)
# however they are first imported.
pytest.register_assert_rewrite("tests.image_fixtures", "tests.restore_fixtures")


@functools.cache
def _choice() -> KernelChoice | str:
    """The session's kernel, or why none could be chosen."""
    try:
        return chosen_kernel()
    except KernelChoiceError as exc:
        return str(exc)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse to run when --dist loadgroup did not group: tests that share a server port or a
    cache (xdist_group) would run side by side and fail in ways that look like bugs. pytest
    9.2 made pytest-xdist's group suffix on node IDs a silent no-op (pytest-xdist#1386)."""
    if not getattr(session.config.option, "loadgroup", False):  # set in xdist's workers
        return
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        message = (
            f"pytest-xdist did not group {len(lost)} tests marked xdist_group (first: {lost[0]}); "
            "install a pytest it works with (pyproject.toml pins it): scripts/setup"
        )
        os.write(2, f"error: {message}\n".encode())  # a worker's exception reaches no terminal
        raise pytest.UsageError(message)


def pytest_report_header() -> str:
    choice = _choice()
    if isinstance(choice, str):
        return f"test kernel: none ({choice})"
    return f"test kernel: {choice.version} ({choice.why}; {choice.moddir})"


@pytest.fixture(scope="session")
def kernel() -> tuple[str, Path]:
    """(version, modules directory) of the kernel under test: see tests/kernel_fixtures.py
    (INITRD_COMPOSER_TEST_KERNEL=VERSION chooses it)."""
    choice = _choice()
    if isinstance(choice, str):
        pytest.fail(choice)
    return choice.version, choice.moddir


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


@pytest.fixture(scope="session")
def debian_initrd(kernel: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(version, initramfs-tools image) for the kernel under test: /boot/initrd.img-V, or,
    for a kernel installed without one (a copied test kernel), one mkinitramfs makes now."""
    version = kernel[0]
    if not Path(f"/boot/vmlinuz-{version}").is_file():
        pytest.fail(f"/boot/vmlinuz-{version} missing: the kernel under test must be bootable")
    installed = Path(f"/boot/initrd.img-{version}")
    if installed.is_file():
        return version, installed
    made = tmp_path_factory.mktemp("debian-initrd") / f"initrd.img-{version}"
    run(["mkinitramfs", "-o", made, version], timeout=1800)
    return version, made
