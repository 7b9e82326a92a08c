"""Module-name and alias normalisation, kmod's rules, applied once at parse time."""

from __future__ import annotations

_KO_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def normalize_name(name: str) -> str:
    """kmod treats '-' and '_' in module names as the same: keep '_'."""
    return name.replace("-", "_")


def normalize_alias(alias: str) -> str | None:
    """'-' to '_' outside bracket expressions (kmod's alias_normalize).

    Returns None for an unmatched '[' or ']', which kmod rejects too.
    """
    if "[" not in alias and "]" not in alias:
        return alias.replace("-", "_")  # the common case, 26,000 times per kernel
    out: list[str] = []
    i = 0
    n = len(alias)
    while i < n:
        ch = alias[i]
        if ch == "]":
            return None
        if ch == "[":
            end = alias.find("]", i + 1)
            if end < 0:
                return None
            out.append(alias[i : end + 1])
            i = end + 1
            continue
        out.append("_" if ch == "-" else ch)
        i += 1
    return "".join(out)


def strip_ko_suffix(filename: str) -> str | None:
    for suffix in _KO_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return None


def name_from_path(path: str) -> str:
    """'kernel/drivers/net/e1000/e1000.ko.xz' -> 'e1000'."""
    base = path.rsplit("/", 1)[-1]
    stem = strip_ko_suffix(base)
    if stem is None:
        raise ValueError(f"not a kernel module path: {path!r}")
    return normalize_name(stem)
