"""scripts/bench's alias-matching benchmark: modalias lookups in module_db's AliasIndex
against a linear fnmatch scan, over the kernel's whole alias table and over our image's.
Both must give the same modules for every modalias, or the run fails."""

from __future__ import annotations

import fnmatch
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_common import log, ratio

from initrd_composer.errors import ComposeError
from initrd_composer.image.reader import read_member
from module_db.alias_match import AliasIndex
from module_db.contract import MANIFEST_PATH, ImageManifest
from module_db.index_files import AliasLine
from module_db.load import load_kernel_modules
from module_db.names import normalize_alias

ALIAS_REPEATS = 5


@dataclass(frozen=True)
class AliasTable:
    """AliasIndex.match against a linear fnmatch scan over one alias table."""

    name: str
    patterns: int
    matched: int  # modaliases that match at least one module
    build_ms: float  # AliasIndex construction, median
    first_pass_ms: float  # a fresh index over every modalias once (it compiles regexes lazily)
    indexed_us: float  # per lookup, median over the passes
    linear_us: float

    @property
    def speedup(self) -> float:
        return ratio(self.linear_us, self.indexed_us)


@dataclass(frozen=True)
class AliasBench:
    modaliases: int
    repeats: int
    tables: tuple[AliasTable, ...]


def linear_match(aliases: Sequence[AliasLine], modalias: str) -> tuple[str, ...]:
    """kmod's answer the slow way: every pattern through fnmatchcase, modules in table order."""
    query = normalize_alias(modalias)
    if query is None:
        return ()
    return tuple(dict.fromkeys(a.module for a in aliases if fnmatch.fnmatchcase(query, a.pattern)))


def check_same_matches(index: AliasIndex, aliases: Sequence[AliasLine], modaliases: Sequence[str],
                       table: str) -> int:  # fmt: skip
    """Raise unless the index and the linear scan agree on every modalias; the count that matched."""
    for modalias in modaliases:
        indexed, linear = index.match(modalias), linear_match(aliases, modalias)
        if indexed != linear:
            raise ComposeError(
                f"{table}: AliasIndex gives {list(indexed)} for {modalias!r}, fnmatch gives {list(linear)}",
                "module_db.alias_match disagrees with fnmatch; add this modalias to its tests",
            )
    return sum(1 for m in modaliases if index.match(m))


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_alias_table(
    name: str, aliases: Sequence[AliasLine], modaliases: Sequence[str], repeats: int
) -> AliasTable:
    """Index build, a fresh index's first pass, then warm per-lookup medians of index and linear scan."""
    build_s = median_seconds(lambda: AliasIndex(aliases), repeats)
    index = AliasIndex(aliases)
    start = time.perf_counter()
    for modalias in modaliases:
        index.match(modalias)
    first_s = time.perf_counter() - start
    matched = check_same_matches(index, aliases, modaliases, name)  # also the linear scan's warm-up
    indexed_s = median_seconds(lambda: [index.match(m) for m in modaliases], repeats)
    linear_s = median_seconds(lambda: [linear_match(aliases, m) for m in modaliases], repeats)
    n = len(modaliases)
    return AliasTable(name, len(aliases), matched, round(build_s * 1e3, 3), round(first_s * 1e3, 3),
                      round(indexed_s / n * 1e6, 2), round(linear_s / n * 1e6, 2))  # fmt: skip


def measure_alias(
    kver: str, image: Path, modaliases: Sequence[str], repeats: int = ALIAS_REPEATS
) -> AliasBench:
    """AliasIndex against fnmatch over the kernel's modules.alias and over our image's filtered table."""
    if not modaliases:
        raise ComposeError("the boot's hwreport lists no modaliases", "check the hwreport's devices")
    kernel = load_kernel_modules(Path("/lib/modules") / kver, kver)
    text = read_member(image, MANIFEST_PATH).decode()
    manifest = ImageManifest.from_json(text, f"{image}:{MANIFEST_PATH}")
    tables = []
    for name, aliases in (
        ("kernel modules.alias", kernel.aliases),
        ("our image's manifest", manifest.aliases),
    ):
        t = time_alias_table(name, aliases, modaliases, repeats)
        log(f"alias {name}: {t.indexed_us:.1f} us indexed, {t.linear_us:.1f} us linear per lookup")
        tables.append(t)
    return AliasBench(len(modaliases), repeats, tuple(tables))
