"""`restore STEP` in the expert shell: nuke's steps one at a time (see expert_steps), on the
restore set the boot's media stage found (SOURCE_NOTE). `restore plan` writes nothing and
saves the plan; each later step plans again on the saved disks, refuses when that plan or a
disk differs, runs, and records what it wrote. `restore status` says where things stand."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from initrd_composer.boot.console import log
from initrd_composer.boot.restore import RestoreRefused, StepFailed
from initrd_composer.boot.restore.expert_steps import (
    SAYS,
    StepRefused,
    disk_from,
    disks_changed,
    done_after,
    new_state,
    order_problem,
    status_lines,
    to_go,
    usage_lines,
)
from initrd_composer.boot.restore.plan_text import refusal_lines
from initrd_composer.boot.restore.stage import (
    FS_DIR,
    SOURCE_NOTE,
    Prepared,
    archived,
    extract,
    fix_up,
    make_storage,
    mounted,
    noted_location,
    prepare,
)
from initrd_composer.boot.restore.targets import read_target_disks
from initrd_composer.boot.restore.write_storage import Written, make_filesystems
from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.verify import compare_tree

STATE = Path("/run/initrd-composer/restore/steps.json")
SHOWN_MISMATCHES = 20


def _load() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(STATE.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StepRefused(f"cannot read {STATE}: {exc}", "start again with `restore plan`") from exc
    return state


def _save(state: dict[str, Any]) -> None:
    """Atomically, readable by root only (the source note in it may hold a URL's password)."""
    STATE.parent.mkdir(parents=True, exist_ok=True)
    part = STATE.with_name(STATE.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(part, STATE)


def _on_cmdline(word: str) -> bool:
    with contextlib.suppress(OSError), open("/proc/cmdline") as f:
        return word in f.read().split()
    return False


def _plan(words: Sequence[str]) -> None:
    try:
        note = json.loads(SOURCE_NOTE.read_text())
    except (OSError, ValueError) as exc:
        raise StepRefused(
            f"no restore set noted in {SOURCE_NOTE}: the boot's media stage found none",
            "boot again with `expert` and the medium's parameters (nfsmount=, url=, restore_set=)",
        ) from exc
    resize = not ("noresize" in words or _on_cmdline("noresize"))
    in_place = "nopart" in words or _on_cmdline("nopart")
    location = noted_location(note, log)
    section: dict[str, Any] = {}
    try:
        p = prepare(location, list(note["devices"]), section, log, resize=resize, in_place=in_place)
    except RestoreSetError as exc:
        raise StepRefused(exc.message, exc.hint) from exc
    state = new_state(note, location.shown, resize, p.disks, json.loads(json.dumps(section["plan"])))
    _save({**state, "nopart": in_place})
    targets = ", ".join(f"/dev/{d.assignment.target.name}" for d in p.plan.disks)
    log(f"restore plan: nothing written; `restore partition` writes {targets}")


def _replan(state: dict[str, Any], step: str) -> Prepared:
    """The plan `restore plan` showed, made again on the disks it was made on."""
    section: dict[str, Any] = {}
    location = noted_location(state["source"], log)
    disks = [disk_from(d) for d in state["disks"]]
    try:
        p = prepare(
            location, list(state["source"]["devices"]), section, log, resize=bool(state["resize"]),
            disks=disks, checks=step == "partition", in_place=bool(state.get("nopart")),
        )
    except RestoreSetError as exc:
        raise StepRefused(exc.message, exc.hint) from exc
    if json.loads(json.dumps(section["plan"])) != state["plan"]:
        raise StepRefused(
            f"the restore set {location.shown} gives another plan than `restore plan` showed",
            "run `restore plan` again and read the new plan",
        )
    used = [d.assignment.target.name for d in p.plan.disks]
    changed = disks_changed(disks, read_target_disks(), used)
    if changed:
        raise StepRefused("; ".join(changed), "run `restore plan` again")
    return p


def _verify(p: Prepared, state: dict[str, Any]) -> bool:
    """Every restored file read back and compared with the manifest; the files `restore
    bootloader` changed are listed apart (the fix-ups change them on purpose)."""
    expected = set(state.get("fixups_changed") or [])
    wrong: list[str] = []
    by_fixups = 0
    pairs = [(t, FS_DIR / a.name) for t, a in archived(p)]
    with mounted(pairs):
        for t, archive in archived(p):
            mount = str(t.record.get("mountpoint") or (t.record.get("fstab") or {}).get("mountpoint") or "/")
            for m in compare_tree(FS_DIR / archive.name, archive, content=True):
                path = os.path.normpath(os.path.join(mount, m.path))
                if path in expected:
                    by_fixups += 1
                else:
                    wrong.append(f"{path}: {m.what}")
    files = sum(len(a.files) for _t, a in archived(p))
    for line in wrong[:SHOWN_MISMATCHES]:
        log(f"restore verify: {line}")
    more = f" (and {len(wrong) - SHOWN_MISMATCHES} more)" if len(wrong) > SHOWN_MISMATCHES else ""
    fixed = f"; {by_fixups} changed by `restore bootloader`, as it does" if by_fixups else ""
    log(f"restore verify: {files} files, {len(wrong)} differ from the manifest{more}{fixed}")
    return not wrong


def _write_step(step: str, state: dict[str, Any]) -> bool:
    p = _replan(state, step)
    saved = state["written"]
    if step == "partition":
        written = Written()
    else:
        written = Written(list(saved["disks"]), [] if step == "mkfs" else list(saved["filesystems"]))
    ok = True
    try:
        if step == "partition":
            make_storage(p, written)
        elif step == "mkfs":
            make_filesystems(p.targets, written)
        elif step == "extract":
            section: dict[str, Any] = {}
            extract(p, section=section, log=log)
            log(f"restore extract: {section['verified_files']} files, {section['bytes'] / 1e6:.1f} MB "
                "restored and verified")  # fmt: skip
        elif step == "verify":
            ok = _verify(p, state)
        elif step == "bootloader":
            section = {}
            fix_up(p, section=section, log=log)
            state["fixups_changed"] = section["fixups"]["changed"]
    finally:
        state["written"] = written.__dict__
        _save(state)
    if ok:
        state["done"] = done_after(step, state["done"])
        if step in ("partition", "mkfs", "extract"):
            state["fixups_changed"] = []
        _save(state)
    return ok


def _step(step: str, words: Sequence[str]) -> bool:
    if step == "status":
        for line in status_lines(_load()):
            log(f"restore status: {line}")
        return True
    if step == "plan":
        _plan(words)
        return True
    state = _load()
    if step == "all":
        if state is None:
            _plan(words)
            state = _load()
        assert state is not None
        for next_step in to_go(state["done"]):
            log(f"restore all: {next_step}")
            if not _write_step(next_step, state):
                return False
        log("restore all: every step done; reboot to start the restored system")
        return True
    refused = order_problem(step, [] if state is None else state["done"])
    if refused is not None or state is None:
        raise refused or StepRefused("no plan yet", "run `restore plan`")
    return _write_step(step, state)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("help", "-h", "--help"):
        for line in usage_lines():
            print(line)
        return 0 if args else 2
    step, words = args[0], args[1:]
    if step not in SAYS:
        log(f"restore: there is no step {step!r}")
        log("hint: `restore help` lists the steps")
        return 2
    try:
        return 0 if _step(step, words) else 1
    except StepRefused as exc:
        log(f"restore {step} refused: {exc.message}")
        log(f"hint: {exc.hint}")
    except RestoreRefused as exc:
        for line in refusal_lines(exc):
            log(line)
    except (StepFailed, RestoreSetError, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        log(f"restore {step} FAILED: {message}")
        hint = getattr(exc, "hint", "")
        if hint:
            log(f"hint: {hint}")
        log("`restore status` says what was written; a step can be run again")
    return 1
