"""When anything fails: say why, give a shell, then offer reboot. PID 1 never returns."""

from __future__ import annotations

import subprocess
import sys
import time
import traceback

from initrd_composer.boot.console import log
from initrd_composer.boot.syscalls import RB_AUTOBOOT, RB_POWER_OFF, reboot

SHELL = "/bin/sh"


def run_shell(reason: str) -> None:
    log(f"starting a shell ({reason}); exit it to continue")
    try:
        subprocess.run([SHELL, "-i"], check=False)  # noqa: S603 - fixed argv
    except OSError as exc:
        log(f"cannot start {SHELL}: {exc}", 3)
        time.sleep(5)


def power(action: str) -> None:
    log(f"{action} now")
    try:
        reboot(RB_POWER_OFF if action == "power off" else RB_AUTOBOOT)
    except OSError as exc:
        log(f"{action} failed: {exc}", 3)


def reboot_prompt() -> None:
    """Loop forever: the kernel panics if PID 1 exits."""
    while True:
        try:
            sys.stdout.write("initrd-composer: [r]eboot, [p]ower off or [s]hell? ")
            sys.stdout.flush()
            answer = sys.stdin.readline().strip().lower()
        except (OSError, ValueError):
            answer = ""
        if answer.startswith("r"):
            power("reboot")
        elif answer.startswith("p"):
            power("power off")
        elif answer.startswith("s"):
            run_shell("asked for")
        elif not answer:
            time.sleep(1)  # no console input (EOF): don't spin


def emergency(exc: BaseException | None, reason: str) -> None:
    """The reason on the console, an emergency shell, then the reboot prompt."""
    try:
        log(f"FAILED: {reason}", 2)
        if exc is not None:
            for line in traceback.format_exception(exc):
                for part in line.rstrip().splitlines():
                    log(part, 3)
        run_shell("emergency")
    except BaseException:
        pass
    while True:
        try:
            reboot_prompt()
        except BaseException:
            time.sleep(1)
