"""Module files, depmod-style text indexes and the JSON manifest for one image."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from initrd_composer.build.module_files import ModinfoCache, decompressed_name, read_module
from initrd_composer.build.module_plan import ModulePlan
from initrd_composer.image.entries import Entry, data_entry, file_entry
from module_db.contract import ImageManifest, PackedModule
from module_db.kernel_modules import KernelModules


@dataclass(frozen=True)
class PackedModules:
    entries: tuple[Entry, ...]
    firmware_wanted: Mapping[str, tuple[str, ...]]  # module -> firmware names
    image_paths: Mapping[str, str]  # module -> path relative to lib/modules/KVER


def pack_modules(
    plan: ModulePlan, km: KernelModules, moddir: Path, cache: ModinfoCache, keep_compressed: bool
) -> PackedModules:
    """Entries for every planned module file (decompressed unless told to keep them)."""
    prefix = f"lib/modules/{km.version}/"
    entries: list[Entry] = []
    firmware: dict[str, tuple[str, ...]] = {}
    paths: dict[str, str] = {}
    for name, mod in plan.modules.items():
        host = moddir / mod.path
        compressed = host.name.endswith((".xz", ".zst", ".gz"))
        if compressed and not keep_compressed:
            data = read_module(host)
            firmware[name] = cache.firmware(host, data)
            rel = decompressed_name(mod.path)
            entries.append(data_entry(prefix + rel, data, origin=f"module:{name}"))
        else:
            firmware[name] = cache.firmware(host)
            rel = mod.path
            entries.append(file_entry(prefix + rel, host, mode=0o644, origin=f"module:{name}"))
        paths[name] = rel
    return PackedModules(tuple(entries), firmware, paths)


def build_manifest(
    plan: ModulePlan,
    km: KernelModules,
    *,
    packed: PackedModules,
    firmware_present: tuple[str, ...],
    firmware_missing: tuple[str, ...],
    boot: Mapping[str, object],
) -> ImageManifest:
    names = set(plan.modules)
    modules: dict[str, PackedModule] = {}
    for name, mod in plan.modules.items():
        soft = km.softdep(name, kmod_compatible=False)
        modules[name] = PackedModule(
            name=name,
            path=packed.image_paths[name],
            deps=tuple(d for d in km.deps[name].deps if d in names),
            softdep_pre=soft.pre,
            softdep_post=soft.post,
            weakdeps=km.weakdeps.get(name, ()),
            module_class=mod.module_class,
            reason=mod.reason,
            firmware=packed.firmware_wanted.get(name, ()),
        )
    return ImageManifest(
        kernel=km.version,
        modules=modules,
        aliases=tuple(a for a in km.aliases if a.module in names),
        builtin=km.builtin,
        builtin_aliases=km.builtin_aliases,
        firmware_present=firmware_present,
        firmware_missing=firmware_missing,
        boot=dict(boot),
    )


def index_entries(manifest: ImageManifest, km: KernelModules) -> list[Entry]:
    """modules.dep/.alias/.softdep/.builtin for the packed subset, so busybox modprobe
    (the kernel's request_module helper and the emergency shell's) works in the image."""
    prefix = f"lib/modules/{manifest.kernel}/"
    mods = manifest.modules
    dep_lines = [
        f"{m.path}: {' '.join(mods[d].path for d in m.deps)}".rstrip() + "\n"
        for m in (mods[n] for n in km.order if n in mods)
    ]
    in_order = {n for n in km.order if n in mods}
    dep_lines += [
        f"{m.path}: {' '.join(mods[d].path for d in m.deps)}".rstrip() + "\n"
        for n, m in sorted(mods.items())
        if n not in in_order
    ]
    alias_lines = [f"alias {a.pattern} {a.module}\n" for a in manifest.aliases]
    soft_lines = [
        "softdep {} {}{}\n".format(
            m.name,
            f"pre: {' '.join(m.softdep_pre)} " if m.softdep_pre else "",
            f"post: {' '.join(m.softdep_post)}" if m.softdep_post else "",
        )
        for m in sorted(mods.values(), key=lambda m: m.name)
        if m.softdep_pre or m.softdep_post
    ]
    builtin_lines = [f"kernel/{n}.ko\n" for n in sorted(km.builtin)]
    return [
        data_entry(prefix + "modules.dep", "".join(dep_lines).encode()),
        data_entry(prefix + "modules.alias", "".join(alias_lines).encode()),
        data_entry(prefix + "modules.softdep", "".join(soft_lines).encode()),
        data_entry(prefix + "modules.builtin", "".join(builtin_lines).encode()),
    ]
