"""`nuke` typed in the rescue shell after a refused or failed restore: the same restore again
from step 1, from the restore set the boot found (noted under /run by the first run), then
what restore_then= asks for. The first run's writes need no undoing: step 5 starts by
releasing and re-partitioning every target disk."""

from __future__ import annotations

import json

from initrd_composer.boot.cmdline import parse_cmdline
from initrd_composer.boot.console import log, stage_line
from initrd_composer.boot.emergency import power
from initrd_composer.boot.restore.stage import SOURCE_NOTE, noted_location, restore_detail, run_nuke_at


def main() -> int:
    try:
        note = json.loads(SOURCE_NOTE.read_text())
    except (OSError, ValueError):
        log(f"no restore set noted in {SOURCE_NOTE}: the boot's media stage found none", 3)
        log("boot again with a restore mode (nuke) and the medium's parameters")
        return 1
    with open("/proc/cmdline") as f:
        cfg = parse_cmdline(f.read())
    section = run_nuke_at(noted_location(note, log), list(note["devices"]), log, resize=not cfg.noresize,
                          in_place=cfg.nopart)
    stage_line("restore", section["ok"], restore_detail(section))
    if not section["ok"]:
        return 1
    if cfg.restore_then != "shell":
        power("power off" if cfg.restore_then == "poweroff" else "reboot")
    return 0
