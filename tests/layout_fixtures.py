"""The layout tests' fixture files: tools' output saved under tests/data/layout (this host's
tools) and tests/data/storage (captured inside a guest, for md and LVM)."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
LAYOUT = TESTS / "data" / "layout"
STORAGE = TESTS / "data" / "storage"


def layout_data(name: str) -> str:
    return (LAYOUT / name).read_text()


def storage_data(name: str) -> str:
    return (STORAGE / name).read_text()
