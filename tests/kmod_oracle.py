"""Ask kmod (modprobe) what it thinks, with an empty modprobe.d so only depmod's indexes count."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from initrd_composer.runner import run
from module_db.names import name_from_path


def _base_args(version: str, config_dir: Path, sysroot: Path | None) -> list[str]:
    args = ["modprobe", "-C", str(config_dir), "-S", version]
    if sysroot is not None:
        args += ["-d", str(sysroot)]
    return args


def show_depends(version: str, module: str, config_dir: Path, sysroot: Path | None = None) -> set[str]:
    """Module names on the `insmod` lines of `modprobe --show-depends`."""
    proc = run([*_base_args(version, config_dir, sysroot), "--show-depends", module], check=False)
    names: set[str] = set()
    for line in proc.stdout.decode().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "insmod":
            names.add(name_from_path(parts[1]))
    return names


def show_depends_all(
    version: str, modules: Sequence[str], config_dir: Path, sysroot: Path | None = None
) -> dict[str, set[str]]:
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) * 2) as pool:
        results = pool.map(lambda m: show_depends(version, m, config_dir, sysroot), modules)
        return dict(zip(modules, results, strict=True))


def resolve_aliases(
    version: str, queries: Sequence[str], sentinel: str, config_dir: Path,
    *, sysroot: Path | None = None, batch: int = 400,
) -> dict[str, set[str]]:
    """`modprobe -R` for many queries, batched with -a: a sentinel module name (one that no alias
    resolves to) is put after each query so the output can be split back per query."""
    chunks = [queries[i : i + batch] for i in range(0, len(queries), batch)]

    def one(chunk: Sequence[str]) -> list[set[str]]:
        argv = [*_base_args(version, config_dir, sysroot), "-a", "-R"]
        for q in chunk:
            argv += [q, sentinel]
        out = run(argv, check=False).stdout.decode().splitlines()
        groups: list[set[str]] = [set()]
        for line in out:
            if line.strip() == sentinel:
                groups.append(set())
            else:
                groups[-1].add(line.strip())
        groups.pop()  # after the last sentinel
        if len(groups) != len(chunk):
            raise AssertionError(f"modprobe -R output did not split into {len(chunk)} groups")
        return groups

    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) * 2) as pool:
        results = [g for groups in pool.map(one, chunks) for g in groups]
    return dict(zip(queries, results, strict=True))


_BRACKET = re.compile(r"\[(!|\^)?([^\]]+)\]")


def fill_wildcards(pattern: str) -> str:
    """A concrete modalias the pattern matches: '*' -> '', '?' -> 'X', '[..]' -> a member."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            i += 1
        elif ch == "?":
            out.append("X")
            i += 1
        elif ch == "[" and (m := _BRACKET.match(pattern, i)):
            negate, body = m.group(1), m.group(2)
            if negate:
                members = set(body)
                out.append(next(c for c in "XZz09_Q" if c not in members))
            else:
                out.append(body[0])
            i = m.end()
        elif ch == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)
