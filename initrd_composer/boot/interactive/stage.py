"""`interactive`: the restore set and the plan on the console (console_ui), the mapping, the
sizes and what is restored changed there, then nuke's steps with those choices, their
progress lines on the console and the verification result in the `restore` section."""

from __future__ import annotations

from typing import Any

from initrd_composer.boot.interactive.console_ui import choose
from initrd_composer.boot.interactive.menu_model import Choices, DiskRow, FsRow, Offer
from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.disk_map import exclusion_of
from initrd_composer.boot.restore.model import TargetDisk
from initrd_composer.boot.restore.plan_text import disk_text, plan_lines, refusal_lines
from initrd_composer.boot.restore.stage import (
    Log,
    found_set,
    machine_disks,
    prepare,
    read_set,
    refused_section,
    run_nuke_at,
    set_devices_of,
    write_source_note,
)
from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.location import SetLocation


def _filesystems(layout: dict[str, Any], manifest: Any) -> tuple[FsRow, ...]:
    rows = []
    for fs in layout["filesystems"]:
        name = fs.get("archive")
        if not name:
            continue
        archive = manifest.archive(str(name))
        mount = str(fs.get("mountpoint") or (fs.get("fstab") or {}).get("mountpoint") or "?")
        size = sum(int(f.size or 0) for f in archive.files if f.type == "file")
        rows.append(FsRow(str(name), mount, str(fs.get("type", "")), len(archive.files), size))
    return tuple(sorted(rows, key=lambda r: (r.mount != "/", r.mount)))


def offer_for(
    location: SetLocation, set_devices: list[str], disks: list[TargetDisk], choices: Choices
) -> Offer:
    """The plan with `choices` on this machine's disks (nothing written, no mkfs trial)."""
    manifest, layout = read_set(location)
    writable = tuple(d.name for d in disks if not exclusion_of(d, frozenset()))
    filesystems = _filesystems(layout, manifest)
    try:
        p = prepare(location, set_devices, {}, lambda _line: None, resize=choices.resize, disks=disks,
                    checks=False, pinned=dict(choices.pinned), left_out=choices.left_out)  # fmt: skip
    except RestoreRefused as exc:
        lines = tuple(refusal_lines(exc))
        return Offer(location.shown, (), filesystems, writable, lines, refused=exc.message)
    rows = tuple(
        DiskRow(a.source.name, disk_text(a.source), a.target.name, disk_text(a.target), a.reason)
        for a in (d.assignment for d in p.plan.disks)
    )
    overwritten = tuple(f"/dev/{d.assignment.target.name} ({disk_text(d.assignment.target)})"
                        for d in p.plan.disks)  # fmt: skip
    lines = tuple(plan_lines(p.plan))
    return Offer(location.shown, rows, filesystems, writable, lines, overwritten=overwritten)


def run_interactive(
    found: Any, restore_subdir: str | None, log: Log, url: str | None = None
) -> dict[str, Any]:
    """The `restore` section (mode interactive); never raises for a refusal or a failure."""
    section: dict[str, Any] = {"ok": False, "mode": "interactive", "seconds": 0.0}
    try:
        location = found_set(found, restore_subdir, "interactive restores", url, log)
        set_devices = set_devices_of(found)
        write_source_note(location, set_devices, log)
        read_set(location)  # a set that cannot be read is refused here, before any screen
    except RestoreSetError as exc:
        return refused_section(section, exc, log)
    disks = machine_disks(set_devices)
    chosen = choose(lambda choices: offer_for(location, set_devices, disks, choices))
    if chosen is None:
        log("interactive: nothing written; the shell follows")
        section["refused"] = "left for the shell at the console"
        return section
    mapping = ", ".join(f"{s} -> {t}" for s, t in chosen.pinned) or "the plan shown"
    log(f"interactive: restoring with {mapping}")
    return run_nuke_at(location, set_devices, log, resize=chosen.resize, pinned=dict(chosen.pinned),
                       left_out=chosen.left_out, mode="interactive")  # fmt: skip
