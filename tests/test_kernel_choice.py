"""Which kernel the suite tests (tests/kernel_fixtures.py): chosen on purpose, not the newest
installed; and the helpers that read and rewrite module files whatever their compression."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from initrd_composer.runner import run
from tests.image_fixtures import headline_pattern
from tests.kernel_fixtures import (
    KERNEL_ENV,
    KernelChoiceError,
    choose_kernel,
    chosen_kernel,
    installed_kernels,
    module_bytes,
    plain_module_name,
    recompress_modules,
    versions_in_depends,
    vmlinuz_release,
    write_module,
)

DEBIAN_DEPENDS = "linux-image-6.1.0-57-amd64 (= 6.1.192-3)"


def _root(tmp_path: Path, kernels: dict[str, bool], base: str = "lib/modules") -> Path:
    """A sysroot with modules.dep for each version, and /boot/vmlinuz-V where the value says."""
    for version, bootable in kernels.items():
        (tmp_path / base / version).mkdir(parents=True)
        (tmp_path / base / version / "modules.dep").write_text("kernel/a.ko:\n")
        if bootable:
            (tmp_path / "boot").mkdir(exist_ok=True)
            (tmp_path / "boot" / f"vmlinuz-{version}").write_bytes(b"MZ")
    (tmp_path / base / "6.0.0-no-modules-dep").mkdir(parents=True)  # not installed: no modules.dep
    return tmp_path


def test_metapackage_depends_names_the_kernel() -> None:
    assert versions_in_depends(DEBIAN_DEPENDS) == ["6.1.0-57-amd64"]
    assert versions_in_depends("linux-image-6.12.9-amd64-unsigned (= 1) | linux-image-6.12.9-amd64, "
                               "initramfs-tools") == ["6.12.9-amd64", "6.12.9-amd64"]
    assert versions_in_depends("linux-image-amd64-signed-template, dracut") == []


def test_the_metapackages_kernel_wins_over_a_newer_one(tmp_path: Path) -> None:
    root = _root(tmp_path, {"6.1.0-57-amd64": True, "6.12.9-amd64": True})
    choice = choose_kernel(None, DEBIAN_DEPENDS, root)
    assert (choice.version, choice.moddir) == ("6.1.0-57-amd64", root / "lib/modules/6.1.0-57-amd64")
    assert choice.why == "linux-image-amd64 depends on it"


def test_the_variable_wins_over_the_metapackage(tmp_path: Path) -> None:
    root = _root(tmp_path, {"6.1.0-57-amd64": True, "6.12.9-amd64": False})
    choice = choose_kernel("6.12.9-amd64", DEBIAN_DEPENDS, root)
    assert (choice.version, choice.why) == ("6.12.9-amd64", f"{KERNEL_ENV}=6.12.9-amd64")


def test_an_unknown_version_in_the_variable_is_an_error_listing_the_installed(tmp_path: Path) -> None:
    root = _root(tmp_path, {"6.1.0-57-amd64": True, "6.12.9-amd64": True})
    with pytest.raises(KernelChoiceError, match=r"=6\.0\.0-no-modules-dep: no .*modules\.dep; "
                                                r"installed are 6\.1\.0-57-amd64, 6\.12\.9-amd64$"):
        choose_kernel("6.0.0-no-modules-dep", None, root)


def test_a_metapackage_without_its_kernel_is_an_error_not_another_kernel(tmp_path: Path) -> None:
    root = _root(tmp_path, {"6.12.9-amd64": True})
    with pytest.raises(KernelChoiceError, match=f"linux-image-amd64 is installed but .* set {KERNEL_ENV}="):
        choose_kernel(None, DEBIAN_DEPENDS, root)


def test_without_the_metapackage_the_newest_bootable(tmp_path: Path) -> None:
    # 6.10 is newer than 6.9 (numeric, not text, order); 6.11 has no /boot/vmlinuz.
    root = _root(tmp_path, {"6.9.0-1-amd64": True, "6.10.0-1-amd64": True, "6.11.0-1-amd64": False})
    choice = choose_kernel(None, None, root)
    assert (choice.version, choice.why) == ("6.10.0-1-amd64", "the newest with modules and /boot/vmlinuz")
    assert list(installed_kernels(root)) == ["6.9.0-1-amd64", "6.10.0-1-amd64", "6.11.0-1-amd64"]


def test_without_any_vmlinuz_the_newest_with_modules(tmp_path: Path) -> None:
    root = _root(tmp_path, {"6.9.0-1-amd64": False, "6.10.0-1-amd64": False}, base="usr/lib/modules")
    choice = choose_kernel(None, None, root)
    assert (choice.version, choice.moddir) == ("6.10.0-1-amd64", root / "usr/lib/modules/6.10.0-1-amd64")


def test_no_kernel_at_all_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KernelChoiceError, match="no kernel installed: scripts/setup installs"):
        choose_kernel(None, None, tmp_path)


def test_this_machines_choice(kernel: tuple[str, Path]) -> None:
    """The session's kernel is the variable's, else the one dpkg says linux-image-amd64
    depends on (asked here straight from dpkg-query), else the newest bootable."""
    assert chosen_kernel().version == kernel[0]
    assert chosen_kernel({KERNEL_ENV: kernel[0]}).version == kernel[0]
    assert (kernel[1] / "modules.dep").is_file()
    if os.environ.get(KERNEL_ENV):
        assert kernel[0] == os.environ[KERNEL_ENV]
        return
    proc = run(["dpkg-query", "-W", "-f=${Status}\n${Depends}", "linux-image-amd64"], check=False)
    status, _nl, depends = proc.stdout.decode().partition("\n")
    if proc.returncode == 0 and status == "install ok installed":
        assert re.search(rf"(^|[ ,|])linux-image-{re.escape(kernel[0])}(-unsigned)?( |,|$)", depends), depends
        # Debian's kernel: its vmlinuz reports the version its modules directory is named by.
        assert vmlinuz_release(Path(f"/boot/vmlinuz-{kernel[0]}")) == kernel[0]
        return
    bootable = [v for v in installed_kernels() if Path(f"/boot/vmlinuz-{v}").is_file()]
    if bootable:
        assert bootable[-1] == kernel[0]
    else:  # no installed kernel has a /boot/vmlinuz: the newest with modules
        assert list(installed_kernels())[-1] == kernel[0]


def test_headline_pattern_resolves_to_the_chosen_kernel() -> None:
    installed = ["6.1.0-56-amd64", "6.1.0-57-amd64", "6.99.0-xztest-amd64"]
    assert headline_pattern("6.99.0-xztest-amd64", installed) == "6.x"
    assert headline_pattern("6.1.0-57-amd64", installed) == "6.1.*"
    assert headline_pattern("6.1.0-56-amd64", installed) == "6.1.0-56-amd64"
    assert headline_pattern("6.1.0-57-amd64", ["6.1.0-57-amd64", "5.10.0-30-amd64"]) == "6.x"


@pytest.mark.parametrize("suffix", ["", ".xz", ".zst", ".gz"])
def test_module_files_are_rewritten_in_any_compression(
    suffix: str, tmp_path: Path, kernel: tuple[str, Path]
) -> None:
    moddir = tmp_path / "m"
    (moddir / "kernel/net").mkdir(parents=True)
    elf = b"\x7fELF\x02\x01" + bytes(range(256)) * 40
    (moddir / "kernel/net/a.ko.xz").write_bytes(b"")
    write_module(moddir / "kernel/net/a.ko.xz", elf)
    (moddir / "kernel/net/b.ko").write_bytes(elf[::-1])
    (moddir / "modules.dep").write_text("kernel/net/a.ko.xz: kernel/net/b.ko\nkernel/net/b.ko:\n")
    recompress_modules(moddir, suffix)
    assert sorted(p.name for p in (moddir / "kernel/net").iterdir()) == [f"a.ko{suffix}", f"b.ko{suffix}"]
    assert module_bytes(moddir / f"kernel/net/a.ko{suffix}") == elf
    assert module_bytes(moddir / f"kernel/net/b.ko{suffix}") == elf[::-1]
    assert (moddir / "modules.dep").read_text() == (
        f"kernel/net/a.ko{suffix}: kernel/net/b.ko{suffix}\nkernel/net/b.ko{suffix}:\n"
    )
    # modinfo (kmod) reads what was written, as it reads the kernel's own files (Debian's
    # kmod is built without zlib: `kmod --version` says -ZLIB, and then .ko.gz is not read).
    real = next((kernel[1] / "kernel/drivers/net/ethernet/intel/e1000").glob("e1000.ko*"))
    copy = tmp_path / f"e1000.ko{suffix}"
    write_module(copy, module_bytes(real))
    assert plain_module_name(copy.name) == "e1000.ko"
    feature = {"": "", ".xz": "+XZ", ".zst": "+ZSTD", ".gz": "+ZLIB"}[suffix]
    if feature in run(["kmod", "--version"]).stdout.decode().split() or not feature:
        assert run(["modinfo", "-F", "name", copy]).stdout.decode().strip() == "e1000"
