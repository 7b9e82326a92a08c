"""SOURCE_DATE_EPOCH: the one date every image and medium carries (reproducible-builds.org).

One rule for the initrd and the media, so the same environment gives the same dates on both.
"""

from __future__ import annotations

import os
from pathlib import Path

from initrd_composer.errors import ComposeError


def source_date_epoch(fallback: Path) -> int:
    """SOURCE_DATE_EPOCH (decimal seconds since 1970, as `date +%s` prints them), else the
    mtime of `fallback`: a file that only changes with the inputs (a kernel package's)."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        if not (env.isascii() and env.isdigit()):
            raise ComposeError(f"SOURCE_DATE_EPOCH={env!r} is not a number", "set seconds since 1970")
        return int(env)
    return int(fallback.stat().st_mtime)
