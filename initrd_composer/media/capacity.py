"""Will it fit: a medium's capacity (iso --media-size, obdr --capacity) and the free space
under an output, both checked before the first byte is written."""

from __future__ import annotations

import errno
import math
import os
import shutil
from pathlib import Path

from initrd_composer.errors import ComposeError


def mib(size: int, *, up: bool) -> str:
    """MiB with one decimal, ".0" dropped ("700", "0.2"): what is needed rounded up (never
    shown smaller than it is), what a medium holds to the nearest tenth."""
    tenths = math.ceil(size * 10 / 2**20) if up else round(size * 10 / 2**20)
    return f"{tenths // 10}" if tenths % 10 == 0 else f"{tenths / 10:.1f}"


def check_capacity(needed: int, capacity: int | None, what: str, hint: str, *, detail: str = "") -> None:
    """ComposeError "WHAT needs N MiB[DETAIL], the medium holds M MiB" when `needed` bytes
    exceed `capacity` (None: no limit); `hint` names the caller's own options."""
    if capacity is not None and needed > capacity:
        need, held = mib(needed, up=True), mib(capacity, up=False)
        raise ComposeError(f"{what} needs {need} MiB{detail}, the medium holds {held} MiB", hint)


def check_free_space(directory: Path, needed: int) -> None:
    """OSError(ENOSPC) when the filesystem of `directory` has less than `needed` bytes free:
    raised inside an atomic writer, it becomes "no space left on device writing PATH" before
    a tool fails half-way with a message of its own."""
    if shutil.disk_usage(directory).free < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
