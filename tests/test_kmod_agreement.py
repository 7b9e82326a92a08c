"""module_db against kmod over a whole real kernel: dependency closures and alias resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from module_db.kernel_modules import KernelModules
from module_db.load import load_kernel_modules
from tests.kmod_oracle import fill_wildcards, resolve_aliases, show_depends_all

pytestmark = pytest.mark.oracle


def _assert_deps_agree(km: KernelModules, version: str, cfg: Path, sysroot: Path | None) -> None:
    names = sorted(km.deps)
    oracle = show_depends_all(version, names, cfg, sysroot)
    wrong = {n: (set(km.load_order([n])), oracle[n]) for n in names if set(km.load_order([n])) != oracle[n]}
    assert not wrong, f"{len(wrong)} modules disagree with kmod, e.g. {sorted(wrong.items())[:3]}"


def _assert_aliases_agree(km: KernelModules, version: str, cfg: Path, sysroot: Path | None) -> None:
    queries = sorted({fill_wildcards(a.pattern) for a in km.aliases})
    targets = {a.module for a in km.aliases} | {a.module for a in km.builtin_aliases}
    sentinel = next(n for n in sorted(km.deps) if n not in targets)
    oracle = resolve_aliases(version, queries, sentinel, cfg, sysroot=sysroot)
    wrong = {q: (set(km.resolve(q)), oracle[q]) for q in queries if set(km.resolve(q)) != oracle[q]}
    assert len(queries) > 1000
    assert not wrong, f"{len(wrong)} of {len(queries)} modaliases disagree, e.g. {sorted(wrong.items())[:3]}"


def test_deps_agree_with_modprobe(kernel: tuple[str, Path], kernel_modules: KernelModules,
                                  tmp_path: Path) -> None:
    _assert_deps_agree(kernel_modules, kernel[0], tmp_path, None)


def test_aliases_agree_with_modprobe(kernel: tuple[str, Path], kernel_modules: KernelModules,
                                     tmp_path: Path) -> None:
    _assert_aliases_agree(kernel_modules, kernel[0], tmp_path, None)


def test_compressed_copy_agrees(compressed_kernel: tuple[str, Path, Path], tmp_path: Path) -> None:
    version, sysroot, moddir = compressed_kernel
    km = load_kernel_modules(moddir)
    suffix = ".ko.xz" if any(e.path.endswith(".xz") for e in km.deps.values()) else ".ko.zst"
    assert all(e.path.endswith(suffix) for e in km.deps.values())
    _assert_deps_agree(km, version, tmp_path, sysroot)
    _assert_aliases_agree(km, version, tmp_path, sysroot)
