"""Logging for PID 1: every line to the console and to the kernel log."""

from __future__ import annotations

import os
import sys
import time

PREFIX = "initrd-composer"
_kmsg: dict[str, int] = {}  # "fd" once /dev/kmsg is open


def uptime() -> float:
    try:
        with open("/proc/uptime", "rb") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def open_kmsg(path: str = "/dev/kmsg") -> None:
    try:
        _kmsg["fd"] = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        _kmsg.pop("fd", None)


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
    """A machine-readable line (hwreport:) on the console only, unprefixed and whole."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError:
        pass
