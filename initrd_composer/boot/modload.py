"""Loading modules from the image with finit_module, dependencies first, each once."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from module_db.kernel_modules import KernelModules
from module_db.names import normalize_name


@dataclass
class LoadResult:
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # module -> reason
    denied: list[str] = field(default_factory=list)


def loaded_modules(proc_modules: str = "/proc/modules") -> set[str]:
    try:
        with open(proc_modules) as f:
            return {line.split()[0] for line in f if line.strip()}
    except OSError:
        return set()


class ModuleLoader:
    """Knows what is loaded; loads a module's closure in order. Built-ins are skipped."""

    def __init__(
        self,
        km: KernelModules,
        modules_dir: str,
        deny: Iterable[str] = (),
        loaded: set[str] | None = None,
        finit: Callable[[int], None] | None = None,
    ) -> None:
        from initrd_composer.boot.syscalls import finit_module  # noqa: PLC0415 - ctypes only at boot

        self.km = km
        self.modules_dir = modules_dir
        self.deny = {normalize_name(d) for d in deny}
        self.loaded = loaded_modules() if loaded is None else loaded
        self.result = LoadResult()
        self._finit = finit or finit_module
        self._attempted: set[str] = set()

    def load(self, names: Iterable[str]) -> list[str]:
        """Load `names` with their dependencies; returns what was newly loaded. A denied
        module is never loaded, nor is a module that needs one (it could not link)."""
        names = [normalize_name(n) for n in names]  # iterated twice
        for name in names:
            if name in self.deny:
                self._deny(name)
        new: list[str] = []
        for mod in self.km.load_order([n for n in names if n not in self.deny], kmod_compatible=False):
            if mod in self.loaded or mod in self._attempted:
                continue
            self._attempted.add(mod)
            if mod in self.deny:
                self._deny(mod)
                continue
            denied = [d for d in self.km.deps[mod].deps if d in self.deny and d not in self.loaded]
            if denied:
                self.result.failed[mod] = f"needs denied module {denied[0]}"
                continue
            if self._insert(mod):
                new.append(mod)
        return new

    def _deny(self, mod: str) -> None:
        if mod not in self.result.denied:
            self.result.denied.append(mod)

    def _insert(self, mod: str) -> bool:
        path = os.path.join(self.modules_dir, self.km.deps[mod].path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.result.failed[mod] = f"cannot open {path}: {exc.strerror}"
            return False
        try:
            self._finit(fd)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                self.loaded.add(mod)
                return False
            # ENODEV/ENXIO: the driver found no device it can drive; not an error of ours.
            self.result.failed[mod] = os.strerror(exc.errno or 0)
            return False
        finally:
            os.close(fd)
        self.loaded.add(mod)
        self.result.loaded.append(mod)
        return True
