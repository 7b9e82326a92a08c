"""Which target disk each saved disk is restored onto (pure).

ReaR once mapped disks by size alone and wiped the disk holding the backup; MondoRescue went
wrong when the kernel named the disks in another order. So:

0. A choice made at the console (`pinned`: source disk -> target disk, the interactive
   mode's mapping) comes first; a chosen disk that may never be written, is missing or too
   small refuses the mapping, naming the choice.
1. A target disk that holds the restore set or is the boot medium, or whose name, WWN or
   serial is among the excluded ones, is never a candidate, even when it is the only one that
   would fit (the refusal then says so).
2. By identity: each source disk, in its saved order, goes to the candidate with the same WWN,
   else the same serial (both sides non-empty), if that disk is large enough.
3. By size, the source disks left, in their saved order: the smallest remaining candidate at
   least as large as the source disk (no shrinking); if there is none, the largest remaining
   candidate that holds the source disk's minimum (shrinking as little as possible). Ties go
   to the target name that sorts first, so the target disks' listing order never matters.
4. A source disk that no remaining candidate can take refuses the whole mapping, naming the
   disk and its numbers; the hint lists every target disk, its size and why it was not used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.model import SourceDisk, TargetDisk, human_bytes


@dataclass(frozen=True)
class DiskAssignment:
    source: SourceDisk
    target: TargetDisk
    reason: str  # "by WWN <wwn>", "by serial <serial>", "by size"


def exclusion_of(target: TargetDisk, excluded: frozenset[str]) -> str:
    """Why a target disk may never be written, or "" when it may."""
    if target.holds_restore_set:
        return "holds the restore set"
    if target.is_boot_medium:
        return "is the boot medium"
    for label, value in (("name", target.name), ("WWN", target.wwn), ("serial", target.serial)):
        if value and value in excluded:
            return f"excluded by {label} {value}"
    return ""


def map_disks(
    sources: Iterable[SourceDisk],
    targets: Iterable[TargetDisk],
    excluded: Iterable[str] = (),
    minimum_bytes: Mapping[str, int] | None = None,
    pinned: Mapping[str, str] | None = None,
) -> tuple[DiskAssignment, ...]:
    """The assignments in the sources' saved order. `minimum_bytes` is the smallest target each
    source disk (by name) may go to (from sizing); a disk missing from it must not shrink.
    `pinned`: target disk names the user chose, by source disk name."""
    source_list = list(sources)
    ordered = sorted(targets, key=lambda t: (t.name, t.size_bytes))
    excluded_set = frozenset(excluded)
    minimum = dict(minimum_bytes or {})
    why_not = {t.name: exclusion_of(t, excluded_set) for t in ordered}
    free = [t for t in ordered if not why_not[t.name]]
    chosen: dict[str, DiskAssignment] = {}

    def need(src: SourceDisk) -> int:
        return min(minimum.get(src.name, src.size_bytes), src.size_bytes)

    for src in source_list:
        name = (pinned or {}).get(src.name)
        if name is not None:
            target = _pinned_target(src, name, ordered=ordered, free=free, why_not=why_not, need=need(src))
            chosen[src.name] = DiskAssignment(src, target, "chosen at the console")
            free.remove(target)
    for src in source_list:
        if src.name in chosen:
            continue
        match = _identity_match(src, free, need(src))
        if match is not None:
            target, reason = match
            chosen[src.name] = DiskAssignment(src, target, reason)
            free.remove(target)
    for src in source_list:
        if src.name in chosen:
            continue
        fit = _size_match(src, free, need(src))
        if fit is None:
            raise _refusal(src, need(src), ordered=ordered, why_not=why_not, chosen=chosen,
                           source_count=len(source_list))
        chosen[src.name] = DiskAssignment(src, fit, "by size")
        free.remove(fit)
    return tuple(chosen[src.name] for src in source_list)


def _pinned_target(
    src: SourceDisk, name: str, *, ordered: list[TargetDisk], free: list[TargetDisk],
    why_not: dict[str, str], need: int,
) -> TargetDisk:
    target = next((t for t in ordered if t.name == name), None)
    if target is None:
        raise RestoreRefused(f"source disk {src.name} was sent to {name}, which this machine does not have",
                             "choose one of the target disks listed")  # fmt: skip
    if why_not[name]:
        raise RestoreRefused(f"source disk {src.name} was sent to {name}, which {why_not[name]}",
                             "choose another target disk: this one is never written")  # fmt: skip
    if target not in free:
        raise RestoreRefused(f"source disk {src.name} was sent to {name}, which another source disk takes",
                             "send each source disk to a disk of its own")  # fmt: skip
    if target.size_bytes < need:
        raise RestoreRefused(
            f"source disk {src.name} was sent to {name} ({human_bytes(target.size_bytes)}), which cannot "
            f"hold it: it needs at least {human_bytes(need)}",
            "choose a larger disk, or boot without noresize to let it shrink",
        )
    return target


def _identity_match(src: SourceDisk, free: list[TargetDisk], need: int) -> tuple[TargetDisk, str] | None:
    for label, key in (("WWN", "wwn"), ("serial", "serial")):
        value = getattr(src, key)
        if not value:
            continue
        for target in free:
            if getattr(target, key) == value and target.size_bytes >= need:
                return target, f"by {label} {value}"
    return None


def _size_match(src: SourceDisk, free: list[TargetDisk], need: int) -> TargetDisk | None:
    whole = [t for t in free if t.size_bytes >= src.size_bytes]
    if whole:
        return min(whole, key=lambda t: (t.size_bytes, t.name))
    shrunk = [t for t in free if t.size_bytes >= need]
    if shrunk:
        return min(shrunk, key=lambda t: (-t.size_bytes, t.name))
    return None


def _refusal(
    src: SourceDisk,
    need: int,
    *,
    ordered: list[TargetDisk],
    why_not: dict[str, str],
    chosen: dict[str, DiskAssignment],
    source_count: int,
) -> RestoreRefused:
    taken = {a.target.name: a.source.name for a in chosen.values()}
    lines = []
    for t in ordered:
        if why_not[t.name]:
            why = why_not[t.name]
        elif t.name in taken:
            why = f"taken by source disk {taken[t.name]}"
        else:
            why = f"too small (needs at least {human_bytes(need)})"
        lines.append(f"  {t.name} ({t.transport or 'disk'} {human_bytes(t.size_bytes)}): {why}")
    usable = [t for t in ordered if not why_not[t.name]]
    fitting_but_excluded = [t for t in ordered if why_not[t.name] and t.size_bytes >= need]
    if len(usable) < source_count and not [t for t in usable if t.name not in taken]:
        why_text = f"too few target disks ({len(usable)} usable for {source_count} source disks)"
    else:
        why_text = (
            f"no remaining target disk holds its {human_bytes(need)} "
            f"({need} bytes; the disk was {human_bytes(src.size_bytes)})"
        )
    if fitting_but_excluded:
        why_text += "; " + ", ".join(
            f"{t.name} would fit but {why_not[t.name]} and is never written" for t in fitting_but_excluded
        )
    message = f"cannot place source disk {src.name}: {why_text}"
    hint = "target disks:\n" + "\n".join(lines) if lines else "no target disks found"
    return RestoreRefused(message, hint)
