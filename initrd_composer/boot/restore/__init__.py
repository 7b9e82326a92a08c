"""The `nuke` restore, one step per module; the plan is pure logic and no I/O:

- `model`: what the saved machine's layout and the new machine's disks look like (frozen
  dataclasses the layout capture's JSON is read into) and the partition roles;
- `disk_map`: which target disk each saved disk goes to (never the restore set's disk or the
  boot medium);
- `sizing`: each partition's, logical volume's and RAID1 array's size on its target disk;
- `plan_text`: the plan as console lines and as the report's `restore` section;
- `targets`: this machine's disks from /sys, and those never to be written;
- `sfdisk_script`, `lvm_metadata`, `mkfs_args`, `device_names`: what to run (pure);
- `write_storage`, `extract_all`, `fixups`: the write steps; `stage`: all of it in order;
  `again`: `nuke` typed in the rescue shell.

The whole plan is made and shown before the first write; a refusal (`RestoreRefused`) writes
nothing.
"""

from __future__ import annotations


class RestoreRefused(Exception):
    """The restore cannot go ahead as asked: `message` says what and why (naming the disk,
    partition or filesystem and its numbers), `hint` what the person at the console can do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class StepFailed(Exception):
    """A write step of the restore (storage, extraction, fix-ups) failed after the first write:
    `message` names the command or file, `hint` what was written so far or what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
