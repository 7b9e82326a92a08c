"""The terminfo entries packed for the interactive restore's curses screen (build/terminfo.py),
from a fake root and from this machine's ncurses-base."""

from __future__ import annotations

from pathlib import Path

from initrd_composer.build.terminfo import TERMINALS, terminfo_entries


def test_each_entry_from_the_first_directory_holding_it_and_the_missing_named(tmp_path: Path) -> None:
    for rel in ("lib/terminfo/l/linux", "usr/share/terminfo/l/linux", "usr/share/terminfo/v/vt100"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    entries, warnings = terminfo_entries(tmp_path, ("linux", "vt100", "xterm"))
    assert [(e.path, e.source) for e in entries] == [
        ("usr/share/terminfo/l/linux", tmp_path / "lib/terminfo/l/linux"),
        ("usr/share/terminfo/v/vt100", tmp_path / "usr/share/terminfo/v/vt100"),
    ]
    assert len(warnings) == 1 and warnings[0].startswith("no terminfo entry for xterm in ")


def test_the_build_machine_has_every_entry() -> None:
    entries, warnings = terminfo_entries(Path("/"))
    assert warnings == [] and len(entries) == len(TERMINALS)
