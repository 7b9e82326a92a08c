"""What every scripts/bench stage shares: the checkout root, paths as the report shows
them, progress lines on stderr, console transcripts, and the ratio every target and table is made of."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from initrd_composer.errors import ComposeError

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs; a zero or negative denominator means a broken measurement."""
    if theirs <= 0:
        raise ComposeError(f"cannot take a ratio against {theirs}", "the anchor measurement failed")
    return ours / theirs


def display_path(path: Path) -> str:
    """Relative to the checkout when inside it, so BENCHMARKS.md does not name the machine's paths."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def save_console(path: Path, lines: Sequence[str]) -> Path:
    """A boot's console transcript, kept for whoever reads a failure or checks a number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
