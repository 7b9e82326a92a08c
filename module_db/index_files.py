"""Parsers for the text indexes depmod writes into /lib/modules/KVER.

Each takes the file's text (and its name, for error messages) and returns plain
immutable data. Module names are normalised here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from module_db.errors import ModuleDbError
from module_db.names import name_from_path, normalize_alias, normalize_name


@dataclass(frozen=True)
class DepEntry:
    name: str
    path: str  # relative to the modules directory, as modules.dep has it
    deps: tuple[str, ...]  # module names, in modules.dep order (reverse load order)


@dataclass(frozen=True)
class SoftDep:
    pre: tuple[str, ...] = ()  # names or aliases, resolved later
    post: tuple[str, ...] = ()


@dataclass(frozen=True)
class AliasLine:
    pattern: str  # normalised (kmod's alias_normalize)
    module: str


@dataclass(frozen=True)
class BuiltinInfo:
    names: frozenset[str]
    aliases: tuple[AliasLine, ...] = field(default=())


def _content_lines(text: str) -> list[tuple[int, str]]:
    return [
        (no, line)
        for no, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def parse_modules_dep(text: str, filename: str = "modules.dep") -> dict[str, DepEntry]:
    """`path: dep-path dep-path...` per line."""
    entries: dict[str, DepEntry] = {}
    for no, line in _content_lines(text):
        head, sep, tail = line.partition(":")
        if not sep or not head.strip():
            raise ModuleDbError("expected 'module.ko: deps...'", filename, no, line)
        try:
            name = name_from_path(head.strip())
            deps = tuple(name_from_path(p) for p in tail.split())
        except ValueError as exc:
            raise ModuleDbError(str(exc), filename, no, line) from None
        entries[name] = DepEntry(name=name, path=head.strip(), deps=deps)
    return entries


def parse_modules_alias(text: str, filename: str = "modules.alias") -> list[AliasLine]:
    """`alias PATTERN module` per line; patterns kmod would reject are skipped as kmod does."""
    out: list[AliasLine] = []
    for no, line in _content_lines(text):
        parts = line.split()
        if len(parts) != 3 or parts[0] != "alias":
            raise ModuleDbError("expected 'alias PATTERN MODULE'", filename, no, line)
        pattern = normalize_alias(parts[1])
        if pattern is None:
            continue
        out.append(AliasLine(pattern=pattern, module=normalize_name(parts[2])))
    return out


def parse_softdeps(text: str, filename: str = "modules.softdep") -> dict[str, tuple[SoftDep, ...]]:
    """`softdep MODULE pre: a b post: c`, one SoftDep per line, in file order.

    Words before any 'pre:'/'post:' are ignored, as kmod does. A module may have
    several lines (one per MODULE_SOFTDEP); kmod itself only honours the first.
    """
    acc: dict[str, list[SoftDep]] = {}
    for no, line in _content_lines(text):
        parts = line.split()
        if len(parts) < 2 or parts[0] != "softdep":
            raise ModuleDbError("expected 'softdep MODULE pre: ... post: ...'", filename, no, line)
        pre: list[str] = []
        post: list[str] = []
        mode: list[str] | None = None
        for word in parts[2:]:
            if word == "pre:":
                mode = pre
            elif word == "post:":
                mode = post
            elif mode is not None:
                mode.append(word)
        acc.setdefault(normalize_name(parts[1]), []).append(SoftDep(tuple(pre), tuple(post)))
    return {name: tuple(lines) for name, lines in acc.items()}


def parse_weakdeps(text: str, filename: str = "modules.weakdep") -> dict[str, tuple[str, ...]]:
    """`weakdep MODULE DEP` lines (kernels from 6.8 on write modules.weakdep)."""
    acc: dict[str, list[str]] = {}
    for no, line in _content_lines(text):
        parts = line.split()
        if len(parts) < 3 or parts[0] != "weakdep":
            raise ModuleDbError("expected 'weakdep MODULE DEP'", filename, no, line)
        acc.setdefault(normalize_name(parts[1]), []).extend(parts[2:])
    return {name: tuple(deps) for name, deps in acc.items()}


def parse_modules_builtin(text: str, filename: str = "modules.builtin") -> frozenset[str]:
    names: set[str] = set()
    for no, line in _content_lines(text):
        try:
            names.add(name_from_path(line.strip()))
        except ValueError:
            raise ModuleDbError("expected a module path", filename, no, line) from None
    return frozenset(names)


def parse_builtin_modinfo(data: bytes, filename: str = "modules.builtin.modinfo") -> BuiltinInfo:
    """NUL-separated `module.key=value` records; gives built-in names and their aliases."""
    names: set[str] = set()
    aliases: list[AliasLine] = []
    for record in data.split(b"\0"):
        if not record:
            continue
        text = record.decode("utf-8", errors="replace")
        key, eq, value = text.partition("=")
        module, dot, field_name = key.partition(".")
        if not eq or not dot:
            raise ModuleDbError("expected 'module.key=value'", filename, 0, text)
        name = normalize_name(module)
        names.add(name)
        if field_name == "alias":
            pattern = normalize_alias(value)
            if pattern is not None:
                aliases.append(AliasLine(pattern=pattern, module=name))
    return BuiltinInfo(names=frozenset(names), aliases=tuple(aliases))


def parse_modules_order(text: str) -> tuple[str, ...]:
    """Link order of modules; used to load same-priority candidates in the kernel's order."""
    out: list[str] = []
    for _no, line in _content_lines(text):
        try:
            out.append(name_from_path(line.strip()))
        except ValueError:
            continue  # modules.order may list .o for built-ins on some kernels
    return tuple(out)


def parse_modinfo(section: bytes) -> dict[str, list[str]]:
    """The .modinfo section of a module: NUL-separated key=value; keys repeat (alias, firmware)."""
    info: dict[str, list[str]] = {}
    for record in section.split(b"\0"):
        if not record or b"=" not in record:
            continue
        key, _, value = record.decode("utf-8", errors="replace").partition("=")
        info.setdefault(key, []).append(value)
    return info
