"""What one scripts/bench run found: the project's targets and their verdicts, the driver
classes each anchor packs and we lack, and the Report gathering them with the measurements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench_alias import AliasBench
from bench_boot import BootTimings
from bench_builds import Build
from bench_common import ratio
from bench_machine import Machine
from bench_nfs import NfsTimings
from bench_pxe import PxeTimings
from bench_restore_set import RestoreSetBench

TIME_TARGET = 1 / 8  # our wall time / mkinitramfs wall time
SIZE_TARGET = 1.0  # our image size / mkinitramfs image size
BOOT_TARGET = 1.0  # uptime at our probe end / uptime at Debian's udev coldplug+settle end
CAPTURE_TARGET = 0.9  # at least: our capture's MB/s / tar -c --zstd's
RESTORE_TARGET = 1.0  # at least: our restore+verify's MB/s / tar -x --zstd's


@dataclass(frozen=True)
class Target:
    """A measured ratio and the limit it should stay at or under (at_least: reach)."""

    name: str
    value: float
    limit: float
    at_least: bool = False  # a speed ratio: the value must be the limit or more

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"


@dataclass(frozen=True)
class ClassComparison:
    """Which of an anchor's driver classes and modules our image lacks."""

    anchor: str
    missing_classes: tuple[str, ...]  # the anchor has >= 1 module of the class, we have none
    theirs_not_ours: Mapping[str, tuple[str, ...]]  # class -> module names, sorted
    ours_not_theirs: int  # modules only we carry

    @property
    def theirs_not_ours_count(self) -> int:
        return sum(len(names) for names in self.theirs_not_ours.values())


@dataclass(frozen=True)
class Report:
    kernel: str
    invocation: str  # how scripts/bench was run
    machine: Machine
    builds: tuple[Build, ...]
    targets: tuple[Target, ...]
    comparisons: tuple[ClassComparison, ...]
    notes: tuple[str, ...] = field(default=())
    boot: BootTimings | None = None
    alias: AliasBench | None = None
    nfs: NfsTimings | None = None
    pxe: PxeTimings | None = None
    restore_set: RestoreSetBench | None = None
    raw_json: str = "out/bench/bench.json"  # where report_json() goes, for the header

    def build(self, key: str) -> Build | None:
        return next((b for b in self.builds if b.key == key), None)


def compare_classes(anchor: str, ours: Mapping[str, str], theirs: Mapping[str, str]) -> ClassComparison:
    """Classes the anchor packs at least one module of and we pack none of; module diffs."""
    our_classes = set(ours.values())
    missing = sorted({cls for cls in theirs.values() if cls not in our_classes})
    by_class: dict[str, list[str]] = {}
    for name, cls in theirs.items():
        if name not in ours:
            by_class.setdefault(cls, []).append(name)
    return ClassComparison(
        anchor=anchor,
        missing_classes=tuple(missing),
        theirs_not_ours={cls: tuple(sorted(by_class[cls])) for cls in sorted(by_class)},
        ours_not_theirs=len(set(ours) - set(theirs)),
    )


def targets(builds: Sequence[Build], mkinitramfs: Build, comparison: ClassComparison) -> tuple[Target, ...]:
    """The project's targets against mkinitramfs MODULES=most (medians of each)."""
    found: list[Target] = []
    base_wall = mkinitramfs.wall_median
    for key, what in (("ours-warm", "warm cache, median"), ("ours-cold", "cold cache")):
        build = next((b for b in builds if b.key == key), None)
        if build is not None:
            found.append(
                Target(f"build time ({what}) / mkinitramfs", ratio(build.wall_median, base_wall), TIME_TARGET)
            )
    warm = next((b for b in builds if b.key == "ours-warm"), None)
    if warm is not None:
        found.append(
            Target("image size / mkinitramfs", ratio(warm.size_bytes, mkinitramfs.size_bytes), SIZE_TARGET)
        )
    found.append(Target("driver classes mkinitramfs has and we lack", len(comparison.missing_classes), 0))
    return tuple(found)


def boot_target(boot: BootTimings) -> Target:
    """The issue's boot target: our probe finishes no later (guest uptime) than udev's coldplug+settle."""
    return Target("probe end / udev coldplug+settle end (guest uptime, QEMU)", boot.end_ratio, BOOT_TARGET)


def restore_set_targets(rs: RestoreSetBench) -> tuple[Target, Target]:
    """The issue's throughput targets, on the whole tree: MB/s of file data against GNU tar's."""
    return (
        Target("capture MB/s / tar -c --zstd MB/s", rs.capture_ratio, CAPTURE_TARGET, at_least=True),
        Target("restore+verify MB/s / tar -x --zstd MB/s", rs.restore_ratio, RESTORE_TARGET, at_least=True),
    )


def build_report(
    kver: str, invocation: str, machine: Machine, builds: Sequence[Build], *,
    boot: BootTimings | None = None, alias: AliasBench | None = None, nfs: NfsTimings | None = None,
    pxe: PxeTimings | None = None, restore_set: RestoreSetBench | None = None, notes: Sequence[str] = (),
) -> Report:  # fmt: skip
    """Ratios and class comparisons from the measured builds and boots.

    Build targets need mkinitramfs among the builds; a --boot-only run has no builds.
    """
    by_key = {b.key: b for b in builds}
    comparisons = []
    found: list[Target] = []
    if "mkinitramfs" in by_key:
        ours, mk = by_key["ours-warm"], by_key["mkinitramfs"]
        comparisons.append(compare_classes(mk.label, ours.modules, mk.modules))
        if (dracut := by_key.get("dracut")) is not None:
            comparisons.append(compare_classes(dracut.label, ours.modules, dracut.modules))
        found += targets(builds, mk, comparisons[0])
    if boot is not None:
        found.append(boot_target(boot))
    if restore_set is not None:
        found += restore_set_targets(restore_set)
    return Report(
        kernel=kver,
        invocation=invocation,
        machine=machine,
        builds=tuple(builds),
        targets=tuple(found),
        comparisons=tuple(comparisons),
        notes=(*build_notes(builds), *notes),
        boot=boot,
        alias=alias,
        nfs=nfs,
        pxe=pxe,
        restore_set=restore_set,
    )


def build_notes(builds: Sequence[Build]) -> list[str]:
    if not builds:
        return []
    notes = []
    if not any(b.key == "dracut" for b in builds):
        notes.append("dracut was not built in this run (--skip-dracut).")
    counts = {b.label: len(b.modules) for b in builds if b.key.startswith("ours")}
    if len({frozenset(b.modules) for b in builds if b.key.startswith("ours")}) > 1:
        # the same options must pack the same modules: the source tree changed mid-run
        listed = ", ".join(f"{label} {n}" for label, n in counts.items())
        notes.append(f"our builds did not all pack the same modules ({listed}): the tree changed mid-run.")
    return notes
