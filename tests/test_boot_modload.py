"""ModuleLoader with a fake finit_module: dependency order, each module once, what is
already loaded, kernel errors, the deny list and built-ins; on small index texts and on the
installed kernel's modules."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from initrd_composer.boot.modload import ModuleLoader, loaded_modules
from module_db.index_files import parse_modules_builtin, parse_modules_dep, parse_softdeps
from module_db.kernel_modules import KernelModules
from module_db.names import name_from_path

# modules.dep lists every dependency, transitively, in reverse load order.
DEP = """\
kernel/drivers/base/base-lib.ko:
kernel/lib/crc-a.ko:
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/base/base-lib.ko
kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/base/base-lib.ko
kernel/drivers/message/mptbase.ko:
kernel/drivers/message/mptsas.ko: kernel/drivers/message/mptbase.ko kernel/drivers/scsi/scsi_mod.ko \
kernel/drivers/base/base-lib.ko
kernel/drivers/net/e1000.ko:
kernel/drivers/net/e1000e.ko: kernel/drivers/net/ptp.ko
kernel/drivers/net/ptp.ko:
kernel/drivers/net/nodev.ko:
kernel/drivers/net/absent.ko:
"""
SOFTDEP = """\
softdep sd_mod pre: crc-a
softdep e1000 pre: crc32c post: nodev
"""
BUILTIN = "kernel/crypto/crc32c.ko\nkernel/drivers/block/loop.ko\n"
PROC_MODULES = """\
mptbase 118784 0 - Live 0x0000000000000000
e1000 155648 0 - Live 0x0000000000000000
"""


class FakeKernel:
    """Stands in for finit_module: records which module file each fd is, fails on request."""

    def __init__(self, errors: dict[str, int] | None = None) -> None:
        self.calls: list[str] = []
        self.errors = errors or {}

    def __call__(self, fd: int) -> None:
        name = name_from_path(os.readlink(f"/proc/self/fd/{fd}"))
        self.calls.append(name)
        if name in self.errors:
            code = self.errors[name]
            raise OSError(code, os.strerror(code))


def small_kernel() -> KernelModules:
    return KernelModules(
        version="6.1.0-test",
        deps=parse_modules_dep(DEP),
        aliases=(),
        softdeps=parse_softdeps(SOFTDEP),
        builtin=parse_modules_builtin(BUILTIN),
    )


@pytest.fixture
def moddir(tmp_path: Path) -> Path:
    """A modules directory with a small file for every module but `absent`."""
    base = tmp_path / "lib" / "modules" / "6.1.0-test"
    for entry in parse_modules_dep(DEP).values():
        if entry.name == "absent":
            continue
        path = base / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x7fELF " + entry.name.encode())
    return base


def make_loader(
    moddir: Path,
    kernel: FakeKernel,
    deny: Iterable[str] = (),
    loaded: set[str] | None = None,
) -> ModuleLoader:
    return ModuleLoader(small_kernel(), str(moddir), deny=deny, loaded=loaded or set(), finit=kernel)


def test_dependencies_load_first_and_the_module_path_is_joined(moddir: Path) -> None:
    kernel = FakeKernel()
    loader = make_loader(moddir, kernel)
    assert loader.load(["sd_mod"]) == ["base_lib", "scsi_mod", "crc_a", "sd_mod"]
    assert kernel.calls == ["base_lib", "scsi_mod", "crc_a", "sd_mod"]
    assert loader.result.loaded == kernel.calls
    assert loader.result.failed == {}
    assert {"base_lib", "scsi_mod", "crc_a", "sd_mod"} <= loader.loaded


def test_each_module_is_loaded_at_most_once_across_calls(moddir: Path) -> None:
    kernel = FakeKernel()
    loader = make_loader(moddir, kernel)
    loader.load(["sd_mod"])
    assert loader.load(["mptsas", "sd_mod", "scsi_mod"]) == ["mptbase", "mptsas"]
    assert loader.load(["mptsas"]) == []
    assert kernel.calls == ["base_lib", "scsi_mod", "crc_a", "sd_mod", "mptbase", "mptsas"]
    assert sorted(kernel.calls) == sorted(set(kernel.calls))


def test_dash_and_underscore_name_the_same_module(moddir: Path) -> None:
    kernel = FakeKernel()
    loader = make_loader(moddir, kernel)
    assert loader.load(["base-lib", "base_lib"]) == ["base_lib"]
    assert kernel.calls == ["base_lib"]


def test_loaded_modules_reads_proc_modules(tmp_path: Path) -> None:
    proc = tmp_path / "modules"
    proc.write_text(PROC_MODULES + "\n")
    assert loaded_modules(str(proc)) == {"mptbase", "e1000"}
    assert loaded_modules(str(tmp_path / "missing")) == set()


def test_already_loaded_modules_are_skipped(moddir: Path, tmp_path: Path) -> None:
    proc = tmp_path / "modules"
    proc.write_text(PROC_MODULES)
    kernel = FakeKernel()
    loader = make_loader(moddir, kernel, loaded=loaded_modules(str(proc)))
    # mptbase and e1000 are skipped; e1000's post softdep is still offered
    assert loader.load(["mptsas", "e1000"]) == ["base_lib", "scsi_mod", "mptsas", "nodev"]
    assert kernel.calls == ["base_lib", "scsi_mod", "mptsas", "nodev"]


def test_eexist_counts_as_loaded(moddir: Path) -> None:
    kernel = FakeKernel({"scsi_mod": errno.EEXIST})
    loader = make_loader(moddir, kernel)
    assert loader.load(["sd_mod"]) == ["base_lib", "crc_a", "sd_mod"]
    assert "scsi_mod" in loader.loaded
    assert "scsi_mod" not in loader.result.loaded
    assert loader.result.failed == {}
    loader.load(["mptsas"])
    assert kernel.calls.count("scsi_mod") == 1


def test_enodev_is_recorded_and_not_retried(moddir: Path) -> None:
    kernel = FakeKernel({"nodev": errno.ENODEV})
    loader = make_loader(moddir, kernel)
    assert loader.load(["nodev"]) == []
    assert loader.result.failed == {"nodev": os.strerror(errno.ENODEV)}
    assert "nodev" not in loader.loaded
    assert loader.load(["nodev"]) == []
    assert kernel.calls == ["nodev"]


def test_a_missing_module_file_is_recorded(moddir: Path) -> None:
    kernel = FakeKernel()
    loader = make_loader(moddir, kernel)
    assert loader.load(["absent", "e1000"]) == ["e1000", "nodev"]
    reason = loader.result.failed["absent"]
    assert reason.startswith(f"cannot open {moddir / 'kernel/drivers/net/absent.ko'}: ")
    assert "absent" not in kernel.calls


def test_softdeps_load_around_the_module_and_builtins_never_load(moddir: Path) -> None:
    kernel = FakeKernel()
    loader = make_loader(moddir, kernel)
    # e1000: pre crc32c (built in: nothing to load), post nodev
    assert loader.load(["e1000"]) == ["e1000", "nodev"]
    assert loader.load(["crc32c", "loop", "no_such_module"]) == []
    assert kernel.calls == ["e1000", "nodev"]
    assert loader.result.failed == {}


def test_denied_modules_are_never_loaded(moddir: Path) -> None:
    kernel = FakeKernel()
    loader = make_loader(moddir, kernel, deny=["e1000", "crc-a"])
    assert loader.load(["e1000", "e1000e"]) == ["ptp", "e1000e"]
    # a denied softdep is skipped; the module itself still loads
    assert loader.load(["sd_mod"]) == ["base_lib", "scsi_mod", "sd_mod"]
    loader.load(["e1000", "sd_mod"])
    assert "e1000" not in kernel.calls and "crc_a" not in kernel.calls
    assert loader.result.denied == ["e1000", "crc_a"]


def test_a_denied_dependency_blocks_its_dependents(moddir: Path) -> None:
    kernel = FakeKernel()
    loader = make_loader(moddir, kernel, deny=["scsi-mod"])
    assert loader.load(["mptsas", "sd_mod"]) == ["base_lib", "mptbase", "crc_a"]
    assert kernel.calls == ["base_lib", "mptbase", "crc_a"]
    assert loader.result.denied == ["scsi_mod"]
    assert loader.result.failed == {
        "mptsas": "needs denied module scsi_mod",
        "sd_mod": "needs denied module scsi_mod",
    }


def test_a_denied_dependency_already_loaded_does_not_block(moddir: Path) -> None:
    kernel = FakeKernel()
    loader = make_loader(moddir, kernel, deny=["scsi_mod"], loaded={"scsi_mod"})
    assert loader.load(["sd_mod"]) == ["base_lib", "crc_a", "sd_mod"]
    assert loader.result.failed == {}


def test_names_may_be_a_one_shot_iterator(moddir: Path) -> None:
    kernel = FakeKernel()
    loader = make_loader(moddir, kernel, deny=["e1000"])
    assert loader.load(iter(["e1000", "ptp"])) == ["ptp"]
    assert loader.result.denied == ["e1000"]


# -- the installed kernel ------------------------------------------------------------------


def test_real_kernel_closures_load_in_dependency_order(
    kernel_modules: KernelModules, kernel: tuple[str, Path]
) -> None:
    fake = FakeKernel()
    loader = ModuleLoader(kernel_modules, str(kernel[1]), loaded=set(), finit=fake)
    roots = ["sd_mod", "mptsas", "e1000e", "usb_storage", "st", "nfsv4"]
    roots = [r for r in roots if r in kernel_modules.deps]
    assert len(roots) >= 4
    new = loader.load(roots)
    assert new == fake.calls == loader.result.loaded
    assert loader.result.failed == {}
    assert len(set(fake.calls)) == len(fake.calls)
    position = {m: i for i, m in enumerate(fake.calls)}
    for mod in fake.calls:
        for dep in kernel_modules.deps[mod].deps:
            assert position[dep] < position[mod], f"{dep} must load before {mod}"
    assert set(roots) <= set(fake.calls)
    assert not any(kernel_modules.is_builtin(m) for m in fake.calls)
    # the same closure again loads nothing
    assert loader.load(roots) == []
    assert len(fake.calls) == len(new)


def test_real_kernel_deny_as_a_dependency(
    kernel_modules: KernelModules, kernel: tuple[str, Path]
) -> None:
    fake = FakeKernel()
    loader = ModuleLoader(kernel_modules, str(kernel[1]), deny=["scsi_mod"], loaded=set(), finit=fake)
    loader.load(["sd_mod"])
    assert "scsi_mod" not in fake.calls and "sd_mod" not in fake.calls
    assert loader.result.failed["sd_mod"] == "needs denied module scsi_mod"
    assert loader.result.denied == ["scsi_mod"]
