"""Modalias matching with kmod's semantics, indexed by literal prefix.

kmod matches a device's modalias against every `alias` pattern with glibc
fnmatch(pattern, modalias, 0): case-sensitive, '*' crosses every character,
'[!..]' and '[^..]' negate, a backslash escapes. A linear scan over ~26,000
patterns per device is too slow for PID 1, so patterns are bucketed by their
literal prefix (the text before the first wildcard): a query only tries the
buckets whose prefix it starts with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from module_db.index_files import AliasLine
from module_db.names import normalize_alias

_SPECIAL = "*?[\\"


def _bracket_to_regex(pattern: str, start: int) -> tuple[str, int] | None:
    """Translate the bracket expression at pattern[start] == '['; None if it is unterminated."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    parts: list[str] = []
    first = True
    while i < len(pattern):
        ch = pattern[i]
        if ch == "]" and not first:
            body = "".join(parts)
            if not body:  # only reversed ranges: nothing matches (negated: anything does)
                return ("." if negate else "(?!)"), i + 1
            return ("[^" if negate else "[") + body + "]", i + 1
        first = False
        end = pattern.find(":]", i + 2) if pattern.startswith("[:", i) else -1
        if end >= 0 and re.fullmatch("[a-z]*", pattern[i + 2 : end]):
            parts.append(_POSIX_CLASSES.get(pattern[i + 2 : end], ""))
            i = end + 2
            continue
        # else (glibc): no class name follows, so this '[' is an ordinary member
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            ch = pattern[i]
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            end = i + 3 if pattern[i + 2] == "\\" and i + 3 < len(pattern) else i + 2  # escaped end
            if ch <= pattern[end]:  # glibc: a reversed range matches nothing; re would raise
                parts.append(re.escape(ch) + "-" + re.escape(pattern[end]))
            i = end + 1
            continue
        parts.append(re.escape(ch))
        i += 1
    return None


_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v",
    "xdigit": "0-9A-Fa-f",
    "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
}


def glob_to_regex(pattern: str) -> str:
    """glibc fnmatch (flags 0) pattern -> an anchored Python regex."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            while i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 1
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            bracket = _bracket_to_regex(pattern, i)
            if bracket is None:  # glibc treats an unterminated '[' literally
                out.append(re.escape(ch))
            else:
                out.append(bracket[0])
                i = bracket[1]
                continue
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "\\":  # glibc: a trailing backslash makes the pattern match nothing
            out.append("(?!)")
        else:
            out.append(re.escape(ch))
        i += 1
    return "(?s:" + "".join(out) + r")\Z"


def literal_prefix(pattern: str) -> str:
    for i, ch in enumerate(pattern):
        if ch in _SPECIAL:
            return pattern[:i]
    return pattern


@dataclass(frozen=True)
class _Candidate:
    order: int
    module: str
    pattern: str
    literal: bool  # no wildcard: the pattern equals its prefix


class AliasIndex:
    """All alias patterns of a kernel (or of an image), ready for fast matching."""

    def __init__(self, aliases: Iterable[AliasLine]) -> None:
        self._buckets: dict[str, list[_Candidate]] = {}
        # Compiled on first use: a boot matches a few dozen devices, not every pattern.
        self._compiled: dict[str, re.Pattern[str]] = {}
        for order, line in enumerate(aliases):
            prefix = literal_prefix(line.pattern)
            cand = _Candidate(order, line.module, line.pattern, prefix == line.pattern)
            self._buckets.setdefault(prefix, []).append(cand)
        self._prefix_lengths = sorted({len(p) for p in self._buckets})
        self.pattern_count = sum(len(b) for b in self._buckets.values())

    def _regex(self, pattern: str) -> re.Pattern[str]:
        regex = self._compiled.get(pattern)
        if regex is None:
            regex = self._compiled[pattern] = re.compile(glob_to_regex(pattern))
        return regex

    def match(self, modalias: str) -> tuple[str, ...]:
        """Modules whose patterns match, deduplicated, in modules.alias order."""
        query = normalize_alias(modalias)
        if query is None:
            return ()
        hits: list[_Candidate] = []
        for length in self._prefix_lengths:
            if length > len(query):
                break
            bucket = self._buckets.get(query[:length])
            if bucket is None:
                continue
            for cand in bucket:
                if cand.literal:
                    if len(query) == length:
                        hits.append(cand)
                elif self._regex(cand.pattern).match(query):
                    hits.append(cand)
        hits.sort(key=lambda c: c.order)
        seen: dict[str, None] = {}
        for cand in hits:
            seen.setdefault(cand.module, None)
        return tuple(seen)
