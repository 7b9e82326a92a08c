"""The restore's steps one by one, for the expert shell (`restore plan`, `restore partition`,
...): which step may run after which, and what the shell's steps remember between commands.

Each command is a process of its own, so a step cannot hand the next one its objects: the
state file keeps the disks the plan was made on and the plan itself, and every later step
plans again on those saved disks and refuses when the plan it gets is not the one shown (the
restore set changed) or a disk is not the one planned on any more (removed, replaced,
resized). Pure: the state is a dict, the caller reads and writes the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from initrd_composer.boot.restore.model import ExistingPartition, TargetDisk

STEPS = ("plan", "partition", "mkfs", "extract", "verify", "bootloader")
ALL_STEPS = ("plan", "partition", "mkfs", "extract", "bootloader")  # extract verifies as it goes
NEEDS = {
    "partition": "plan", "mkfs": "partition", "extract": "mkfs", "verify": "extract", "bootloader": "extract",
}
# What each step does, for `restore help` and the usage line.
SAYS = {
    "plan": "read the restore set, map and size it onto this machine's disks (writes nothing); "
    "`restore plan noresize` keeps the saved sizes, `restore plan nopart` the disks' own partitions",
    "partition": "write the partition tables, md arrays and LVM volume groups of the plan",
    "mkfs": "make every filesystem and swap area of the plan",
    "extract": "extract every archive into its filesystem, each file verified as it is written",
    "verify": "read every restored file back and compare it with the manifest",
    "bootloader": "fix the restored system up: fstab, initramfs, GRUB for this machine",
    "all": "every step not done yet, in order",
    "status": "the restore set, the plan's disks, the steps done and what was written",
}


class StepRefused(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def order_problem(step: str, done: Iterable[str]) -> StepRefused | None:
    """The refusal when `step`'s previous step has not been done, else None."""
    needed = NEEDS.get(step)
    if needed is None or needed in set(done):
        return None
    return StepRefused(f"`restore {step}` needs `restore {needed}` first", f"run `restore {needed}`")


def done_after(step: str, done: Iterable[str]) -> list[str]:
    """The steps done once `step` succeeded: a step run again undoes every later one (a new
    partition table leaves no filesystem; new filesystems, no extracted tree)."""
    if step == "verify":
        return sorted({*done, step}, key=STEPS.index)
    index = STEPS.index(step)
    return [s for s in STEPS[:index] if s in set(done)] + [step]


def to_go(done: Iterable[str]) -> list[str]:
    """`restore all`: the steps of a whole restore not done yet."""
    have = set(done)
    return [s for s in ALL_STEPS if s not in have]


def disk_dict(disk: TargetDisk) -> dict[str, Any]:
    return dataclasses.asdict(disk)


def disk_from(record: Mapping[str, Any]) -> TargetDisk:
    names = {f.name for f in dataclasses.fields(TargetDisk)}
    fields = {k: v for k, v in record.items() if k in names}
    fields["partitions"] = tuple(ExistingPartition(**p) for p in record.get("partitions") or ())
    return TargetDisk(**fields)


def _identity(disk: TargetDisk) -> tuple[str, int, str, str]:
    return (disk.name, disk.size_bytes, disk.wwn, disk.serial)


def disks_changed(planned: Iterable[TargetDisk], now: Iterable[TargetDisk], used: Iterable[str]) -> list[str]:
    """How the disks the plan writes (`used`: their names) differ from those there now."""
    current = {d.name: d for d in now}
    problems = []
    for disk in planned:
        if disk.name not in set(used):
            continue
        there = current.get(disk.name)
        if there is None:
            problems.append(f"/dev/{disk.name} is gone")
        elif _identity(there) != _identity(disk):
            problems.append(f"/dev/{disk.name} is not the disk the plan was made on")
    return problems


def new_state(
    source: Mapping[str, Any], shown: str, resize: bool, disks: Iterable[TargetDisk], plan: Any
) -> dict[str, Any]:
    """`source`: the SOURCE_NOTE it was read from; `shown`: the set's place without a password."""
    return {
        "source": dict(source),
        "shown": shown,
        "resize": resize,
        "disks": [disk_dict(d) for d in disks],
        "plan": plan,
        "done": ["plan"],
        "written": {"disks": [], "filesystems": []},
        "fixups_changed": [],
    }


def status_lines(state: Mapping[str, Any] | None) -> list[str]:
    if not state:
        return ["no restore step run yet: `restore plan` starts"]
    mapping = state["plan"].get("mapping") or []
    lines = [
        f"restore set: {state['shown']}",
        "plan: " + (", ".join(f"{m['source']} -> {m['target']}" for m in mapping) or "no disk")
        + ("" if state["resize"] else " (noresize)") + (" (nopart)" if state.get("nopart") else ""),
        f"done: {', '.join(state['done'])}",
    ]
    left = to_go(state["done"])
    lines.append(f"next: restore {left[0]}" if left else "every step is done; `restore verify` checks again")
    written = state["written"]
    if written["disks"] or written["filesystems"]:
        lines.append(
            "written: " + "; ".join(
                part for part in (
                    f"partition tables on {', '.join(written['disks'])}" if written["disks"] else "",
                    f"filesystems {', '.join(written['filesystems'])}" if written["filesystems"] else "",
                ) if part
            )
        )
    else:
        lines.append("written: nothing")
    return lines


def usage_lines() -> list[str]:
    return [
        "usage: restore STEP   (the steps of `nuke`, one at a time)",
        *(f"  {name:<10} {text}" for name, text in SAYS.items()),
    ]
