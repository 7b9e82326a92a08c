"""One kernel's module knowledge: name lookup as kmod does it, and dependency closures."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from module_db.alias_match import AliasIndex
from module_db.index_files import AliasLine, DepEntry, SoftDep
from module_db.names import normalize_alias, normalize_name


@dataclass
class KernelModules:
    """Everything depmod knows about one kernel's modules (text indexes, parsed)."""

    version: str
    deps: Mapping[str, DepEntry]
    aliases: tuple[AliasLine, ...]
    softdeps: Mapping[str, tuple[SoftDep, ...]] = field(default_factory=dict)
    weakdeps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    builtin: frozenset[str] = frozenset()
    builtin_aliases: tuple[AliasLine, ...] = ()
    order: tuple[str, ...] = ()
    _alias_index: AliasIndex | None = field(default=None, repr=False)
    _builtin_index: AliasIndex | None = field(default=None, repr=False)

    @property
    def alias_index(self) -> AliasIndex:
        if self._alias_index is None:
            self._alias_index = AliasIndex(self.aliases)
        return self._alias_index

    @property
    def builtin_alias_index(self) -> AliasIndex:
        if self._builtin_index is None:
            self._builtin_index = AliasIndex(self.builtin_aliases)
        return self._builtin_index

    def resolve(self, name_or_alias: str) -> tuple[str, ...]:
        """What `modprobe -R` answers, in kmod's lookup order (no modprobe.d config):

        a module file of that name, then modules.alias patterns, then a built-in
        module of that name, then built-in aliases. The first step with an answer wins.
        """
        alias = normalize_alias(name_or_alias)
        if alias is None:
            return ()
        if alias in self.deps:
            return (alias,)
        hits = self.alias_index.match(alias)
        if hits:
            return hits
        if alias in self.builtin:
            return (alias,)
        return self.builtin_alias_index.match(alias)

    def is_builtin(self, name: str) -> bool:
        return name in self.builtin and name not in self.deps

    def softdep(self, name: str, kmod_compatible: bool = True) -> SoftDep:
        """The softdeps of a module. kmod honours only a module's first softdep line
        (ksmbd and btrfs have several); the union is what an image should carry."""
        lines = self.softdeps.get(name, ())
        if not lines:
            return SoftDep()
        if kmod_compatible:
            return lines[0]
        pre = tuple(dict.fromkeys(w for line in lines for w in line.pre))
        post = tuple(dict.fromkeys(w for line in lines for w in line.post))
        return SoftDep(pre, post)

    def load_order(self, names: Iterable[str], kmod_compatible: bool = True) -> list[str]:
        """Loadable modules needed to load `names`, dependencies first (what
        `modprobe --show-depends` would insmod): modules.dep plus softdeps, whose
        words may be aliases. Built-ins and unknown names are left out.
        With kmod_compatible=False every softdep line counts, not only the first."""
        out: dict[str, None] = {}
        visiting: set[str] = set()

        def visit(mod: str) -> None:
            if mod in out or mod in visiting or mod not in self.deps:
                return
            visiting.add(mod)
            soft = self.softdep(mod, kmod_compatible)
            # libkmod's probe list: hard dependencies first, then pre softdeps, the module, post.
            for dep in reversed(self.deps[mod].deps):  # modules.dep is transitive, reversed
                visit(dep)
            for word in soft.pre:
                for target in self.resolve(word):
                    visit(target)
            out[mod] = None
            for word in soft.post:
                for target in self.resolve(word):
                    visit(target)
            visiting.discard(mod)

        for name in names:
            visit(normalize_name(name))
        return list(out)

    def pack_closure(self, names: Iterable[str]) -> list[str]:
        """load_order() plus weak dependencies, recursively: what an image must carry."""
        result: dict[str, None] = {}
        pending = [normalize_name(n) for n in names]
        while pending:
            batch = [m for m in self.load_order(pending, kmod_compatible=False) if m not in result]
            pending = []
            for mod in batch:
                result[mod] = None
                for word in self.weakdeps.get(mod, ()):
                    pending.extend(t for t in self.resolve(word) if t not in result)
        return list(result)
