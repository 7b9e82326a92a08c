"""`compare`: this machine's disks against the restore set, writing nothing to them.

The set is read and checked as for a restore; the machine's filesystems (RAID and LVM
assembled by the storage stage) are mounted read-only without journal replay, as its own
etc/fstab arranges them (capture/mount_source.py, the offline capture's code), and each is
compared alone, through a read-only bind mount, with its archive's records by the
restore's verifier: content sha256 and metadata of every file. The saved layout is compared
with this machine's, collected by the capture's collector.

The report is printed, saved as COMPARE_TXT and COMPARE_JSON (every difference), and
returned as the hwreport's `compare` section (the counts and the first REPORT_LIMIT
differences of each kind, so the console line stays short).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from initrd_composer.boot.compare.differences import FileDifferences, layout_differences, report_lines
from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.manifest import ArchiveRecord, Manifest
from initrd_composer.boot.restore_set.verify import compare_tree

RUN_DIR = Path("/run/initrd-composer")
MACHINE_DIR = RUN_DIR / "compare" / "machine"  # the machine, mounted read-only as it boots
COMPARE_TXT = RUN_DIR / "compare.txt"
COMPARE_JSON = RUN_DIR / "compare.json"
REPORT_LIMIT = 100  # differences of each kind in the hwreport section and on the console
Log = Callable[[str], None]


def _mount_point(fs: Mapping[str, Any]) -> str:
    return str(fs.get("mountpoint") or (fs.get("fstab") or {}).get("mountpoint") or "")


def archive_places(
    saved: Mapping[str, Any], now: Mapping[str, Any], mounts: Sequence[Any], manifest: Manifest
) -> tuple[list[tuple[ArchiveRecord, str, Path]], list[str]]:
    """Where each archive's filesystem is mounted here: (archive, its mount point on the saved
    machine, the path here), found by the filesystem's UUID, else by its mount point; and a
    line for each archive that has no place (its files are not compared)."""
    by_uuid = {fs["uuid"]: fs for fs in now.get("filesystems") or [] if fs.get("uuid")}
    places: list[tuple[ArchiveRecord, str, Path]] = []
    unmatched: list[str] = []
    for fs in saved.get("filesystems") or []:
        name = fs.get("archive")
        if not name:
            continue
        archive, mount = manifest.archive(str(name)), _mount_point(fs) or "/"
        here = by_uuid.get(fs.get("uuid"))
        device = os.path.realpath(here["device"]) if here else None
        found = next((m for m in mounts if device and os.path.realpath(m.device) == device), None)
        if found is None and here is None:
            found = next((m for m in mounts if m.mountpoint == mount), None)
        if found is None:
            why = "not mounted by this machine's etc/fstab" if here else "no filesystem with its UUID here"
            unmatched.append(f"{mount} (archive {name}, UUID {fs.get('uuid')}): {why}")
            continue
        places.append((archive, mount, found.path))
    return places, unmatched


def compare_machine(
    manifest: Manifest, saved: Mapping[str, Any], disks: Sequence[str], log: Log
) -> dict[str, Any]:
    """Mount the machine on `disks`, compare it with the set; the section's findings."""
    from initrd_composer.capture.mount_source import mounted_machine  # noqa: PLC0415
    from initrd_composer.capture.session import filesystem_views  # noqa: PLC0415

    MACHINE_DIR.mkdir(parents=True, exist_ok=True)
    files = FileDifferences()
    compared = 0
    with mounted_machine(disks, MACHINE_DIR, gap_dir=None) as (now, source):
        places, unmatched = archive_places(saved, now, source.mounts, manifest)
        trees = [(archive.name, path) for archive, _mount, path in places]
        with filesystem_views(trees, RUN_DIR / "compare") as views:
            for archive, mount, _path in places:
                log(f"compare: {mount}: {len(archive.files)} files of archive {archive.name}")
                files.add(mount, compare_tree(views[archive.name], archive))
                compared += len(archive.files)
    files.sort()
    layout = layout_differences(saved, now)
    return {"files": files, "layout": layout, "unmatched": unmatched, "compared": compared}


def _limited(items: Sequence[Any]) -> list[Any]:
    return list(items[:REPORT_LIMIT])


def section_of(found: Mapping[str, Any], set_shown: str) -> dict[str, Any]:
    """The hwreport section (at most REPORT_LIMIT differences of each kind) and the full
    document saved under /run."""
    files: FileDifferences = found["files"]
    full = {
        "set": set_shown,
        "identical": files.count() == 0 and not found["layout"] and not found["unmatched"],
        "files_compared": found["compared"],
        "counts": {
            "changed": len(files.changed),
            "missing": len(files.missing),
            "extra": len(files.extra),
            "layout": len(found["layout"]),
        },
        "changed": [{"path": p, "what": w} for p, w in files.changed],
        "missing": files.missing,
        "extra": files.extra,
        "layout": found["layout"],
        "not_compared": found["unmatched"],
    }
    short = {key: _limited(value) if isinstance(value, list) else value for key, value in full.items()}
    return {"full": full, "short": {**short, "report": str(COMPARE_TXT)}}


def save_report(full: Mapping[str, Any], lines: Sequence[str]) -> None:
    """COMPARE_TXT and COMPARE_JSON, each written whole then renamed."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in ((COMPARE_TXT, "\n".join(lines) + "\n"), (COMPARE_JSON, json.dumps(full, indent=1))):
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)


def run_compare(found: Any, restore_subdir: str | None, log: Log, url: str | None = None) -> dict[str, Any]:
    """The `compare` report section from what the media stage found; never raises for what the
    console can explain (`ok` False, with `error` and `hint`)."""
    from initrd_composer.boot.capture_mode import source_disk_paths  # noqa: PLC0415
    from initrd_composer.boot.restore.stage import found_set, read_set  # noqa: PLC0415
    from initrd_composer.capture.errors import CaptureError  # noqa: PLC0415

    section: dict[str, Any] = {"ok": False, "mode": "compare"}
    started = time.monotonic()
    try:
        set_dir = found_set(found, restore_subdir, "compare reads", url, log)
        manifest, saved = read_set(set_dir)
        set_device = str(found.source) if str(found.source).startswith("/dev/") else ""
        disks = source_disk_paths(set_device)
        if not disks:
            raise RestoreSetError("no disk to compare on this machine", "check the disks are seen")
        log(f"compare: set {set_dir.shown} against {', '.join(disks)} (read-only)")
        result = compare_machine(manifest, saved, disks, log)
        sections = section_of(result, set_dir.shown)
        found_here = (result["files"], result["layout"], result["unmatched"])
        save_report(sections["full"], report_lines(*found_here))
        for line in report_lines(*found_here, limit=REPORT_LIMIT):
            log(f"compare: {line}")
        log(f"compare: the whole report: {COMPARE_TXT}, {COMPARE_JSON}")
        section.update(sections["short"])
        section["ok"] = True
    except (RestoreSetError, CaptureError) as exc:
        section.update({"error": exc.message, "hint": exc.hint})
        log(f"compare FAILED: {exc.message}")
        log(f"hint: {exc.hint}")
    except OSError as exc:
        section["error"] = str(exc)
        log(f"compare FAILED: {exc}")
    section["seconds"] = round(time.monotonic() - started, 1)
    return section


def compare_detail(section: Mapping[str, Any]) -> str:
    """The `stage: compare` line's detail."""
    if not section["ok"]:
        return str(section.get("error") or "failed")
    counts = section["counts"]
    return (
        f"{counts['changed']} changed, {counts['missing']} missing, {counts['extra']} extra files, "
        f"{counts['layout']} layout differences ({section['files_compared']} files compared in "
        f"{section['seconds']:.1f} s)"
    )
