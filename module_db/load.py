"""Read a kernel's depmod indexes from a modules directory (the only I/O in module_db)."""

from __future__ import annotations

from pathlib import Path

from module_db.errors import ModuleDbError
from module_db.index_files import (
    BuiltinInfo,
    parse_builtin_modinfo,
    parse_modules_alias,
    parse_modules_builtin,
    parse_modules_dep,
    parse_modules_order,
    parse_softdeps,
    parse_weakdeps,
)
from module_db.kernel_modules import KernelModules


def _read_text(path: Path, required: bool) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ModuleDbError("missing; run depmod for this kernel", str(path)) from None
        return None
    except OSError as exc:
        raise ModuleDbError(f"cannot read: {exc.strerror}", str(path)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModuleDbError(f"not text (byte {exc.start}); is it corrupt?", str(path)) from None


def load_kernel_modules(moddir: Path, version: str | None = None) -> KernelModules:
    """Parse modules.dep (required), .alias, .softdep, .weakdep, .builtin(.modinfo), .order."""
    dep_text = _read_text(moddir / "modules.dep", required=True)
    assert dep_text is not None
    deps = parse_modules_dep(dep_text, str(moddir / "modules.dep"))
    if not deps:
        raise ModuleDbError("lists no modules; run depmod", str(moddir / "modules.dep"))
    alias_text = _read_text(moddir / "modules.alias", required=False) or ""
    soft_text = _read_text(moddir / "modules.softdep", required=False) or ""
    weak_text = _read_text(moddir / "modules.weakdep", required=False) or ""
    order_text = _read_text(moddir / "modules.order", required=False) or ""
    builtin = _load_builtin(moddir)
    return KernelModules(
        version=version or moddir.name,
        deps=deps,
        aliases=tuple(parse_modules_alias(alias_text, str(moddir / "modules.alias"))),
        softdeps=parse_softdeps(soft_text, str(moddir / "modules.softdep")),
        weakdeps=parse_weakdeps(weak_text, str(moddir / "modules.weakdep")),
        builtin=builtin.names,
        builtin_aliases=builtin.aliases,
        order=parse_modules_order(order_text),
    )


def _load_builtin(moddir: Path) -> BuiltinInfo:
    """modules.builtin.modinfo (kernels >= 5.2) has names and aliases; older ones only names."""
    modinfo = moddir / "modules.builtin.modinfo"
    names_text = _read_text(moddir / "modules.builtin", required=False) or ""
    names = parse_modules_builtin(names_text, str(moddir / "modules.builtin"))
    try:
        info = parse_builtin_modinfo(modinfo.read_bytes(), str(modinfo))
    except FileNotFoundError:
        return BuiltinInfo(names=names)
    # kmod resolves built-in *names* from modules.builtin only; modinfo adds aliases.
    return BuiltinInfo(names=names, aliases=info.aliases)
