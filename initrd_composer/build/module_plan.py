"""Which modules an image carries, and why: pure planning over a KernelModules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from initrd_composer.errors import ComposeError
from module_db.classify import ALL_CLASSES, classify
from module_db.kernel_modules import KernelModules
from module_db.names import normalize_name

# Everything but NICs is always packed: NICs are all of them or the host's own.
DEFAULT_CLASSES: tuple[str, ...] = tuple(c for c in ALL_CLASSES if c != "nic")


@dataclass(frozen=True)
class PlannedModule:
    name: str
    path: str  # as in modules.dep
    module_class: str | None
    reason: str  # "class:storage", "host-nic:eth0", "added", "dep:ahci"


@dataclass(frozen=True)
class ModulePlan:
    modules: Mapping[str, PlannedModule]  # in load order of the whole set
    roots: tuple[str, ...]

    def names(self) -> list[str]:
        return list(self.modules)


def plan_modules(
    km: KernelModules,
    *,
    all_nics: bool,
    host_nics: Mapping[str, str],
    classes: Sequence[str] = DEFAULT_CLASSES,
    add: Sequence[str] = (),
    omit: Sequence[str] = (),
) -> ModulePlan:
    """Roots by class (+ NICs + --add-modules), minus --omit-modules, closed over deps."""
    unknown = sorted(set(classes) - set(ALL_CLASSES))
    if unknown:
        raise ComposeError(
            f"unknown driver class {', '.join(unknown)}", f"known classes: {', '.join(ALL_CLASSES)}"
        )
    class_of = classify(km.deps)
    wanted = set(classes) | ({"nic"} if all_nics else set())
    reasons: dict[str, str] = {}
    for name in sorted(class_of):
        if class_of[name] in wanted:
            reasons[name] = f"class:{class_of[name]}"
    if not all_nics:
        for name, iface in sorted(host_nics.items()):
            reasons.setdefault(name, f"host-nic:{iface}")
    for word in add:
        targets = km.resolve(word)
        if not targets:
            raise ComposeError(
                f"--add-modules: no module or alias {word!r} in kernel {km.version}",
                "check the name with `compose-initrd match` or modinfo",
            )
        for name in targets:
            if name in km.deps:
                reasons.setdefault(name, "added")
    omitted = {normalize_name(w) for w in omit}
    roots = [n for n in reasons if n not in omitted]
    order = km.pack_closure(roots)
    modules: dict[str, PlannedModule] = {}
    pulled = _first_puller(km, roots)
    for name in order:
        if name in omitted and name not in roots:
            continue  # an omitted dependency: the user asked, we obey (explain shows it)
        modules[name] = PlannedModule(
            name=name,
            path=km.deps[name].path,
            module_class=class_of.get(name),
            reason=reasons.get(name) or f"dep:{pulled.get(name, '?')}",
        )
    return ModulePlan(modules=modules, roots=tuple(sorted(roots)))


def _first_puller(km: KernelModules, roots: Sequence[str]) -> dict[str, str]:
    """module -> a root whose direct deps or softdeps name it (one level is enough to explain)."""
    pulled: dict[str, str] = {}
    pending = sorted(roots)
    seen = set(pending)
    while pending:
        nxt: list[str] = []
        for mod in pending:
            entry = km.deps.get(mod)
            if entry is None:
                continue
            soft = km.softdep(mod, kmod_compatible=False)
            words = list(entry.deps) + list(soft.pre) + list(soft.post) + list(km.weakdeps.get(mod, ()))
            for word in words:
                for target in km.resolve(word) if word not in km.deps else (word,):
                    if target not in seen:
                        seen.add(target)
                        pulled[target] = mod
                        nxt.append(target)
        pending = nxt
    return pulled
