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
from pathlib import Path
from typing import Any

from initrd_composer.boot import syscalls
from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.device_names import device_map
from initrd_composer.boot.restore.extract_all import ExtractJob, extract_and_verify, failure_lines
from initrd_composer.boot.restore.fixups import FixupFailed, run_fixups
from initrd_composer.boot.restore.from_layout import plan_inputs
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
from initrd_composer.boot.restore_set.manifest import MANIFEST_NAME, Manifest, load_set
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


def read_set(set_dir: Path) -> tuple[Manifest, dict[str, Any]]:
    """Step 1: the manifest (complete set, every archive present) and the layout."""
    manifest = load_set(set_dir)
    try:
        text = (set_dir / LAYOUT_NAME).read_text()
    except OSError as exc:
        raise RestoreSetError(
            f"restore set {set_dir}: cannot read {LAYOUT_NAME}: {exc.strerror}", "capture the machine again"
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


def make_plan(layout: Mapping[str, Any], set_devices: list[str]) -> RestorePlan:
    """Steps 2-3: this machine's disks, those never written, the mapping and every size."""
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
    mountinfo = Path("/proc/self/mountinfo").read_text()
    swaps = Path("/proc/swaps").read_text() if Path("/proc/swaps").exists() else ""
    targets = protect(
        read_target_disks(), restore_set_devices=set_devices, in_use=used_devices(mountinfo, swaps)
    )
    return plan_restore(inputs.sources, targets, inputs.vgs, inputs.arrays)


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


def restore(set_dir: Path, set_devices: list[str], section: dict[str, Any], log: Log) -> None:
    """Steps 1-8; fills `section` as it goes. Raises RestoreSetError/RestoreRefused before the
    first write, RestoreFailed after it."""
    started = time.monotonic()
    manifest, layout = read_set(set_dir)
    log(
        f"restore: set {set_dir}: {len(manifest.archives)} archives, "
        f"{sum(len(a.files) for a in manifest.archives)} files"
    )
    plan = make_plan(layout, set_devices)
    section["plan"] = plan_dict(plan)
    for line in plan_lines(plan):
        log(f"restore plan: {line}")
    mapping = device_map(plan)
    targets = fs_targets(layout, mapping, plan)
    preflight(targets)
    refuse_busy(plan)
    written = Written()
    section["written"] = written.__dict__
    try:
        release_targets([f"/dev/{d.assignment.target.name}" for d in plan.disks])
        partition(plan, layout, written)
        build_arrays(plan, layout, written)
        build_volume_groups(plan, layout, mapping, written)
        make_filesystems(targets, written)
        _extract(manifest, set_dir, targets, section=section, log=log)
        _fix_up(layout, manifest, targets, mapping, section=section, log=log)
    except (WriteFailed, FixupFailed, RestoreSetError, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise RestoreFailed(message, written.describe(), written) from exc
    section["seconds"] = round(time.monotonic() - started, 1)


def _extract(
    manifest: Manifest, set_dir: Path, targets: list[FsTarget], *, section: dict[str, Any], log: Log
) -> None:
    archived = [(t, manifest.archive(str(t.record["archive"]))) for t in targets if t.record.get("archive")]
    pairs = [(t, FS_DIR / a.name) for t, a in archived]
    with mounted(pairs):
        jobs = [ExtractJob(a, set_dir / a.file, FS_DIR / a.name) for _t, a in archived]
        results = extract_and_verify(jobs, log)
        os.sync()
    section["files"] = sum(len(a.files) for _t, a in archived)
    section["bytes"] = sum(r.file_bytes for r in results)
    section["extract_seconds"] = max((r.seconds + r.verify_seconds for r in results), default=0.0)
    section["verified_files"] = sum(
        len(a.files) for (_t, a), r in zip(archived, results, strict=True) if r.ok
    )
    failures = failure_lines(results)
    section["failures"] = failures
    if failures:
        raise RestoreSetError(
            f"verification failed: {failures[0]}"
            + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""),
            "the restore set is damaged",
        )


def _fix_up(
    layout: Mapping[str, Any],
    manifest: Manifest,
    targets: list[FsTarget],
    mapping: Mapping[str, str],
    *,
    section: dict[str, Any],
    log: Log,
) -> None:
    """Step 8 on the tree mounted as it will boot; then each filesystem alone again, compared
    with the manifest by metadata, lists every file the fix-ups changed (for the report: a
    reader comparing source and target learns which differences are the restore's own)."""
    archived = [t for t in targets if t.record.get("archive")]
    nested = sorted(
        ((t, _mount_point(t.record)) for t in archived),
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


def found_set(found: Any, restore_subdir: str | None, what: str) -> Path:
    """The set directory on what the media stage found (`what`: "nuke restores", for the
    message); RestoreSetError when nothing was found or the medium is a stream."""
    if found is None:
        raise RestoreSetError("no restore data was found", "see the media stage's lines above")
    if found.kind in ("http", "tape"):
        raise RestoreSetError(
            f"{what} from a mounted set (NFS, CD, USB); {found.kind} is not supported yet",
            "copy the set to an NFS share or a USB disk",
        )
    return locate_set(Path(found.path), restore_subdir)


def run_nuke(found: Any, restore_subdir: str | None, log: Log) -> dict[str, Any]:
    """The `restore` report section of one nuke run from what the media stage found; never
    raises for a refusal or a failure (the section says which, and `ok` is False)."""
    try:
        set_dir = found_set(found, restore_subdir, "nuke restores")
    except RestoreSetError as exc:
        return _refused({"ok": False, "mode": "nuke", "seconds": 0.0}, exc, log)
    set_devices = [found.source] if str(found.source).startswith("/dev/") else []
    try:
        SOURCE_NOTE.parent.mkdir(parents=True, exist_ok=True)
        SOURCE_NOTE.write_text(json.dumps({"set": str(set_dir), "devices": set_devices}))
    except OSError as exc:
        log(f"cannot note the restore set for a later `nuke`: {exc}")
    return run_nuke_at(str(set_dir), set_devices, log)


def _refused(section: dict[str, Any], exc: RestoreRefused | RestoreSetError, log: Log) -> dict[str, Any]:
    if isinstance(exc, RestoreRefused):
        section.update(refusal_dict(exc))
        lines = refusal_lines(exc)
    else:
        section.update({"refused": exc.message, "hint": exc.hint})
        lines = [f"restore refused, nothing written: {exc.message}", exc.hint]
    for line in lines:
        log(line)
    return section


def run_nuke_at(set_dir: str, set_devices: list[str], log: Log) -> dict[str, Any]:
    """One restore from a set directory; the `restore` section."""
    section: dict[str, Any] = {"ok": False, "mode": "nuke", "set": set_dir}
    started = time.monotonic()
    try:
        restore(Path(set_dir), set_devices, section, log)
        section["ok"] = True
    except (RestoreRefused, RestoreSetError) as exc:
        _refused(section, exc, log)
    except RestoreFailed as exc:
        section["error"] = exc.message
        section["written"] = exc.written.__dict__
        log(f"restore FAILED: {exc.message}")
        log(f"restore: {exc.hint}; the restore set is still mounted; `nuke` starts over")
    section["seconds"] = round(time.monotonic() - started, 1)
    return section
