"""`nuke`: restore the saved machine onto this one with no questions, after the media stage.

1-4 (nothing written; a refusal ends here): read and check the restore set, map and size
against this machine's disks, try every mkfs option set on a scratch file, print the plan.
5-8: make the storage, extract every archive (in parallel) and verify every file, fix the
restored system up for the new hardware. A failure after the first write names what was
written and leaves the shell to the person at the console, with the restore set still
mounted; `nuke` in that shell starts over from step 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from initrd_composer.boot import syscalls
from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.device_names import device_map
from initrd_composer.boot.restore.extract_all import ExtractJob, extract_and_verify, failure_lines
from initrd_composer.boot.restore.firmware import bios_source_refusal, started_by_uefi
from initrd_composer.boot.restore.fixups import FixupFailed, run_fixups
from initrd_composer.boot.restore.from_layout import plan_inputs
from initrd_composer.boot.restore.model import TargetDisk
from initrd_composer.boot.restore.plan_text import plan_dict, plan_lines, refusal_dict, refusal_lines
from initrd_composer.boot.restore.sizing import RestorePlan, plan_restore
from initrd_composer.boot.restore.targets import protect, read_target_disks, used_devices
from initrd_composer.boot.restore.write_storage import (
    FsTarget,
    WriteFailed,
    Written,
    build_arrays,
    build_volume_groups,
    fs_targets,
    make_filesystems,
    partition,
    preflight,
    refuse_busy,
    release_targets,
)
from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.layout import LAYOUT_NAME, load_layout
from initrd_composer.boot.restore_set.location import SetDirectory, SetLocation, location_of
from initrd_composer.boot.restore_set.manifest import MANIFEST_NAME, ArchiveRecord, Manifest, load_set
from initrd_composer.boot.restore_set.verify import compare_tree

FS_DIR = Path("/run/initrd-composer/restore/fs")  # each filesystem alone, while extracting
TARGET_DIR = Path("/run/initrd-composer/target")  # the restored tree, nested, for the fix-ups
SOURCE_NOTE = Path("/run/initrd-composer/restore-source.json")  # for `nuke` run again from the shell
Log = Callable[[str], None]


class RestoreFailed(Exception):
    """A failure after the first write: `written` says what was changed."""

    def __init__(self, message: str, hint: str, written: Written) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.written = written


def locate_set(media_root: Path, subdir: str | None = None) -> Path:
    """The set directory: `restore_set=` below the medium's root, else the root itself when it
    holds a set, else its one subdirectory that does (several: the command line must choose)."""
    if subdir:
        return media_root / subdir
    if (media_root / MANIFEST_NAME).exists() or (media_root / LAYOUT_NAME).exists():
        return media_root
    try:
        candidates = sorted(
            p
            for p in media_root.iterdir()
            if p.is_dir() and ((p / MANIFEST_NAME).exists() or (p / LAYOUT_NAME).exists())
        )
    except OSError as exc:
        raise RestoreSetError(f"cannot list {media_root}: {exc.strerror}", "check the medium") from exc
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise RestoreSetError(
            f"no restore set on {media_root}: no {MANIFEST_NAME} there or one level below",
            "capture the machine with `compose-initrd capture -o DIR` onto this medium",
        )
    names = ", ".join(p.name for p in candidates)
    raise RestoreSetError(
        f"several restore sets on {media_root}: {names}",
        "choose one with restore_set=NAME on the kernel command line",
    )


def read_set(where: Path | SetLocation) -> tuple[Manifest, dict[str, Any]]:
    """Step 1: the manifest (complete set, every archive present) and the layout."""
    location = location_of(where)
    manifest = load_set(location)
    try:
        text = location.read(LAYOUT_NAME).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise RestoreSetError(
            f"restore set {location.shown}: cannot read {LAYOUT_NAME}: {why}",
            "capture the machine again",
        ) from exc
    layout = load_layout(text)
    names = {a.name for a in manifest.archives}
    for fs in layout["filesystems"]:
        archive = fs.get("archive")
        if archive is not None and archive not in names:
            raise RestoreSetError(
                f"layout.json sends archive {archive!r} to {fs['device']}, "
                "but the manifest lists no such archive",
                "capture the machine again",
            )
    return manifest, layout


def machine_disks(set_devices: list[str]) -> list[TargetDisk]:
    """This machine's disks, those the rescue system uses or the set lies on marked protected."""
    mountinfo = Path("/proc/self/mountinfo").read_text()
    swaps = Path("/proc/swaps").read_text() if Path("/proc/swaps").exists() else ""
    in_use = used_devices(mountinfo, swaps)
    return protect(read_target_disks(), restore_set_devices=set_devices, in_use=in_use)


def make_plan(
    layout: Mapping[str, Any], disks: list[TargetDisk], *, resize: bool = True,
    pinned: Mapping[str, str] | None = None, in_place: bool = False,
) -> RestorePlan:
    """Steps 2-3: the mapping and every size onto `disks` (machine_disks); `pinned`: target
    disks chosen at the console, by saved disk name."""
    uefi = (layout.get("bootloader") or {}).get("uefi") or {}
    if uefi.get("booted_uefi"):
        # its files would come back, but no NVRAM boot entry: a machine that does not boot
        # while the restore says it went well is what this stage must never produce
        raise RestoreRefused(
            "the saved machine booted with UEFI; this release reinstalls only BIOS GRUB",
            "restore it from the expert shell, then install the boot loader with grub-install "
            "--target=x86_64-efi and efibootmgr in a chroot",
        )
    inputs = plan_inputs(layout)
    return plan_restore(inputs.sources, disks, inputs.vgs, inputs.arrays, resize=resize, pinned=pinned,
                        in_place=in_place)


def _mount_point(fs: Mapping[str, Any]) -> str:
    return str(fs.get("mountpoint") or (fs.get("fstab") or {}).get("mountpoint") or "")


def _mount(target: FsTarget, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    syscalls.mount(target.device, str(where), str(target.record["type"]))


@contextlib.contextmanager
def mounted(pairs: list[tuple[FsTarget, Path]]) -> Iterator[None]:
    done: list[Path] = []
    try:
        for target, where in pairs:
            _mount(target, where)
            done.append(where)
        yield
    finally:
        for where in reversed(done):
            with contextlib.suppress(OSError):
                syscalls.umount(str(where))


@dataclass(frozen=True)
class Prepared:
    """Steps 1-4 done: what the write steps need (nothing has been written)."""

    location: SetLocation
    manifest: Manifest
    layout: dict[str, Any]
    plan: RestorePlan
    mapping: dict[str, str]
    targets: list[FsTarget]
    disks: list[TargetDisk]  # what the plan was made on
    left_out: frozenset[str] = frozenset()  # archives not extracted (made empty): interactive


def prepare(
    location: SetLocation, set_devices: list[str], section: dict[str, Any], log: Log, *, resize: bool = True,
    disks: list[TargetDisk] | None = None, checks: bool = True, pinned: Mapping[str, str] | None = None,
    left_out: frozenset[str] = frozenset(), in_place: bool = False,
) -> Prepared:
    """Steps 1-4: read and check the set, plan, try every mkfs option set; fills `section`.
    Raises RestoreSetError/RestoreRefused; writes nothing. `disks`: plan on these (an expert
    step repeating the plan it was shown) instead of the machine's; checks=False: no mkfs
    trial, no busy check (a step after the storage was made)."""
    manifest, layout = read_set(location)
    log(
        f"restore: set {location.shown}: {len(manifest.archives)} archives, "
        f"{sum(len(a.files) for a in manifest.archives)} files"
    )
    disks = machine_disks(set_devices) if disks is None else disks
    refusal = bios_source_refusal(layout, manifest, started_by_uefi())
    if refusal is not None:
        raise RestoreRefused(*refusal)
    plan = make_plan(layout, disks, resize=resize, pinned=pinned, in_place=in_place)
    section["plan"] = plan_dict(plan)
    if checks:
        if not resize and not in_place:
            log("restore plan: noresize: every partition keeps its saved size")
        for line in plan_lines(plan):
            log(f"restore plan: {line}")
    mapping = dict(device_map(plan))
    targets = fs_targets(layout, mapping, plan)
    if checks:
        preflight(targets)
        refuse_busy(plan)
    return Prepared(location, manifest, layout, plan, mapping, targets, disks, left_out)


def make_storage(p: Prepared, written: Written) -> None:
    """Step 5 up to the filesystems: partition tables, md arrays, LVM volume groups."""
    release_targets([f"/dev/{d.assignment.target.name}" for d in p.plan.disks])
    partition(p.plan, p.layout, written)
    build_arrays(p.plan, p.layout, written)
    build_volume_groups(p.plan, p.layout, p.mapping, written)


def restore(
    location: SetLocation, set_devices: list[str], section: dict[str, Any], log: Log, *, resize: bool = True,
    pinned: Mapping[str, str] | None = None, left_out: frozenset[str] = frozenset(), in_place: bool = False,
) -> None:
    """Steps 1-8; fills `section` as it goes. Raises RestoreSetError/RestoreRefused before the
    first write, RestoreFailed after it. `pinned`, `left_out`: the interactive mode's choices;
    `in_place`: nopart."""
    started = time.monotonic()
    p = prepare(location, set_devices, section, log, resize=resize, pinned=pinned, left_out=left_out,
                in_place=in_place)
    written = Written()
    section["written"] = written.__dict__
    try:
        make_storage(p, written)
        make_filesystems(p.targets, written)
        extract(p, section=section, log=log)
        fix_up(p, section=section, log=log)
    except (WriteFailed, FixupFailed, RestoreSetError, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise RestoreFailed(message, written.describe(), written) from exc
    section["seconds"] = round(time.monotonic() - started, 1)


def archived(p: Prepared) -> list[tuple[FsTarget, ArchiveRecord]]:
    """The filesystems that have an archive to restore, with it."""
    return [
        (t, p.manifest.archive(str(t.record["archive"])))
        for t in p.targets
        if t.record.get("archive") and str(t.record["archive"]) not in p.left_out
    ]


def extract(p: Prepared, *, section: dict[str, Any], log: Log) -> None:
    """Steps 6-7: every archive into its filesystem, side by side, each file verified."""
    archived_fs = archived(p)
    pairs = [(t, FS_DIR / a.name) for t, a in archived_fs]
    with mounted(pairs):
        jobs = [ExtractJob(a, p.location, FS_DIR / a.name) for _t, a in archived_fs]
        results = extract_and_verify(jobs, log)
        os.sync()
    section["files"] = sum(len(a.files) for _t, a in archived_fs)
    section["bytes"] = sum(r.file_bytes for r in results)
    section["extract_seconds"] = max((r.seconds + r.verify_seconds for r in results), default=0.0)
    section["verified_files"] = sum(
        len(a.files) for (_t, a), r in zip(archived_fs, results, strict=True) if r.ok
    )
    failures = failure_lines(results)
    section["failures"] = failures
    if failures:
        raise RestoreSetError(
            f"verification failed: {failures[0]}"
            + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""),
            "the restore set is damaged",
        )


def fix_up(p: Prepared, *, section: dict[str, Any], log: Log) -> None:
    """Step 8 on the tree mounted as it will boot; then each filesystem alone again, compared
    with the manifest by metadata, lists every file the fix-ups changed (for the report: a
    reader comparing source and target learns which differences are the restore's own)."""
    layout, manifest, mapping = p.layout, p.manifest, p.mapping
    nested = sorted(
        ((t, _mount_point(t.record)) for t, _a in archived(p)),
        key=lambda pair: (pair[1].count("/") if pair[1] != "/" else 0, pair[1]),
    )
    if not nested or nested[0][1] != "/":
        raise FixupFailed("the restore set has no root filesystem (mounted at /)", "restore by hand")
    with mounted([(t, TARGET_DIR / mount.lstrip("/")) for t, mount in nested]):
        report = run_fixups(TARGET_DIR, layout, mapping, log)
        os.sync()
    changed: list[str] = []
    with mounted([(t, FS_DIR / str(t.record["archive"])) for t, _mount in nested]):
        for t, mount in nested:
            archive = manifest.archive(str(t.record["archive"]))
            for m in compare_tree(FS_DIR / archive.name, archive, content=False):
                changed.append(os.path.normpath(os.path.join(mount, m.path)))
    section["fixups"] = {**report.to_json(), "changed": sorted(changed)}
    log(
        f"restore: the fix-ups changed {len(changed)} files: {', '.join(sorted(changed)[:8])}"
        + (" ..." if len(changed) > 8 else "")
    )


def restore_detail(section: Mapping[str, Any]) -> str:
    """The `stage: restore` line's detail."""
    if section["ok"]:
        return (
            f"{section.get('files', 0)} files, {section.get('bytes', 0) / 1e6:.1f} MB restored and "
            f"verified in {section['seconds']:.1f} s"
        )
    return str(section.get("error") or section.get("refused") or "failed")


def found_set(
    found: Any, restore_subdir: str | None, what: str, url: str | None = None, log: Log | None = None
) -> SetLocation:
    """Where the set is on what the media stage found (`what`: "nuke restores", for the
    message; `url`: url= as given, with its password, which the report's copy lacks);
    RestoreSetError when nothing was found there."""
    if found is None:
        raise RestoreSetError("no restore data was found", "see the media stage's lines above")
    if found.kind == "http":
        from initrd_composer.boot.sources.http_set import SetUrl, set_base  # noqa: PLC0415

        base = set_base(url or str(found.source), restore_subdir)
        return SetUrl(base, log=log) if log is not None else SetUrl(base)
    if found.kind == "tape":
        from initrd_composer.boot.sources.tape_set import tape_set  # noqa: PLC0415

        return tape_set(str(found.source), found.data.get("set_index"), restore_subdir)
    return SetDirectory(locate_set(Path(found.path), restore_subdir))


def note_source(location: SetLocation, set_devices: list[str]) -> dict[str, Any]:
    """What `nuke` typed in the shell later needs to find the same set again."""
    if isinstance(location, SetDirectory):
        return {"set": str(location.path), "devices": set_devices}
    from initrd_composer.boot.sources.tape_set import TapeSet, note_of  # noqa: PLC0415

    if isinstance(location, TapeSet):
        return {**note_of(location), "devices": set_devices}
    return {"url": getattr(location, "base", ""), "devices": set_devices}


def set_devices_of(found: Any) -> list[str]:
    """The block devices the set is on (a tape is none)."""
    return [found.source] if found.kind != "tape" and str(found.source).startswith("/dev/") else []


def note_found(found: Any, restore_subdir: str | None, url: str | None, log: Log) -> None:
    """expert: the set the media stage found, noted for the shell's `restore` and `nuke`."""
    if found is None or (found.kind == "http" and not str(found.source).endswith(MANIFEST_NAME)):
        return  # a URL with no set behind it
    try:
        location = found_set(found, restore_subdir, "the shell's `restore` steps read", url, log)
    except RestoreSetError as exc:
        log(f"restore steps: {exc.message}")
        return
    write_source_note(location, set_devices_of(found), log)
    log(f"restore set {location.shown}: `restore plan` in the shell starts a restore step by step "
        "(`restore help`)")  # fmt: skip


def write_source_note(location: SetLocation, set_devices: list[str], log: Log) -> None:
    """SOURCE_NOTE, readable by root only (a URL's password)."""
    try:
        SOURCE_NOTE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(SOURCE_NOTE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(note_source(location, set_devices), f)
    except OSError as exc:
        log(f"cannot note the restore set for the shell's `nuke` and `restore`: {exc}")


def noted_location(note: Mapping[str, Any], log: Log) -> SetLocation:
    if note.get("url"):
        from initrd_composer.boot.sources.http_set import SetUrl  # noqa: PLC0415

        return SetUrl(str(note["url"]), log=log)
    if note.get("tape"):
        from initrd_composer.boot.sources.tape_set import from_note  # noqa: PLC0415

        return from_note(note)
    return SetDirectory(Path(str(note["set"])))


def run_nuke(
    found: Any, restore_subdir: str | None, log: Log, url: str | None = None, *, resize: bool = True,
    in_place: bool = False,
) -> dict[str, Any]:
    """The `restore` report section of one nuke run from what the media stage found; never
    raises for a refusal or a failure (the section says which, and `ok` is False)."""
    try:
        location = found_set(found, restore_subdir, "nuke restores", url, log)
    except RestoreSetError as exc:
        return refused_section({"ok": False, "mode": "nuke", "seconds": 0.0}, exc, log)
    set_devices = set_devices_of(found)
    write_source_note(location, set_devices, log)
    return run_nuke_at(location, set_devices, log, resize=resize, in_place=in_place)


def refused_section(
    section: dict[str, Any], exc: RestoreRefused | RestoreSetError, log: Log
) -> dict[str, Any]:
    if isinstance(exc, RestoreRefused):
        section.update(refusal_dict(exc))
        lines = refusal_lines(exc)
    else:
        section.update({"refused": exc.message, "hint": exc.hint})
        lines = [f"restore refused, nothing written: {exc.message}", exc.hint]
    for line in lines:
        log(line)
    return section


def run_nuke_at(
    location: SetLocation, set_devices: list[str], log: Log, *, resize: bool = True,
    pinned: Mapping[str, str] | None = None, left_out: frozenset[str] = frozenset(), mode: str = "nuke",
    in_place: bool = False,
) -> dict[str, Any]:
    """One restore from a set; the `restore` section (`resize` False: noresize; `pinned`,
    `left_out`: what `interactive` chose, and `mode` says so; `in_place`: nopart)."""
    section: dict[str, Any] = {"ok": False, "mode": mode, "set": location.shown, "resize": resize,
                               "nopart": in_place}
    if left_out:
        section["left_out"] = sorted(left_out)
    started = time.monotonic()
    try:
        restore(location, set_devices, section, log, resize=resize, pinned=pinned, left_out=left_out,
                in_place=in_place)
        section["ok"] = True
    except (RestoreRefused, RestoreSetError) as exc:
        refused_section(section, exc, log)
    except RestoreFailed as exc:
        section["error"] = exc.message
        section["written"] = exc.written.__dict__
        log(f"restore FAILED: {exc.message}")
        log(f"restore: {exc.hint}; the restore set is still mounted; `nuke` starts over")
    section["seconds"] = round(time.monotonic() - started, 1)
    return section
