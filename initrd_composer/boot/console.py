"""Logging for PID 1: every line to the console and to the kernel log."""

from __future__ import annotations

import os
import sys
import time

PREFIX = "initrd-composer"
_kmsg: dict[str, int] = {}  # "fd" once /dev/kmsg is open
_mirrors: list[int] = []  # the other consoles of console=tty0 console=ttyS0 (fds)


def uptime() -> float:
    try:
        with open("/proc/uptime", "rb") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def open_kmsg(path: str = "/dev/kmsg") -> None:
    try:
        _kmsg["fd"] = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        _kmsg.pop("fd", None)
        log(f"cannot open {path}: {exc.strerror}; log lines reach /dev/console only", 4)


def mirror_consoles(names: list[str]) -> list[str]:
    """The consoles besides /dev/console, from /sys/class/tty/console/active, whose last
    entry is the one /dev/console writes to (Documentation/ABI/testing/sysfs-tty)."""
    return [n for n in names[:-1] if n != names[-1]]


def open_mirrors(active: str = "/sys/class/tty/console/active", dev: str = "/dev") -> list[str]:
    """With more than one console= (the media menus give tty0 and ttyS0), machine lines
    such as hwreport: go to every one, so a screen sees what the serial port sees.  Log
    lines need no mirror: they reach every console through /dev/kmsg."""
    try:
        with open(active) as f:
            names = f.read().split()
    except OSError:
        return []
    opened = []
    for name in mirror_consoles(names):
        try:
            _mirrors.append(os.open(os.path.join(dev, name), os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC))
            opened.append(name)
        except OSError as exc:  # that screen will not see the hwreport: line
            log(f"cannot open console {name}: {exc.strerror}; machine lines will not reach it", 4)
    return opened


def log(message: str, level: int = 6) -> None:
    """One line on the console (stdout) and, once /dev exists, in dmesg."""
    line = f"{PREFIX}: {message}"
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError:
        pass
    if "fd" in _kmsg:
        try:
            os.write(_kmsg["fd"], f"<{level}>{line}\n".encode(errors="replace")[:1000])
        except OSError:
            pass


def emit(line: str) -> None:
    """A machine-readable line (hwreport:) on the consoles only, unprefixed and whole."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError:
        pass
    data = (line + "\r\n").encode(errors="replace")
    for fd in _mirrors:
        try:
            os.write(fd, data)
        except OSError:
            pass


def stage_line(name: str, ok: bool, detail: str) -> None:
    """`stage: NAME ok|failed DETAIL`: one line per boot stage, for users and scripts."""
    emit(f"stage: {name} {'ok' if ok else 'failed'} {detail}".rstrip())
