"""The terminfo entries the interactive restore's curses screen needs: the Linux console's
(`linux`, TERM as the kernel sets it) and those of the terminals a serial console is read
with (VT100 family, xterm, screen, tmux), from the build root's ncurses-base, at
/usr/share/terminfo, where ncurses looks first after $TERMINFO."""

from __future__ import annotations

from pathlib import Path

from initrd_composer.image.entries import Entry, file_entry

TERMINALS = ("linux", "vt100", "vt102", "vt220", "xterm", "xterm-256color", "screen", "screen-256color",
             "tmux", "tmux-256color", "dumb")  # fmt: skip
SEARCHED = ("etc/terminfo", "lib/terminfo", "usr/share/terminfo")
IMAGE_DIR = "usr/share/terminfo"


def terminfo_entries(root: Path, names: tuple[str, ...] = TERMINALS) -> tuple[list[Entry], list[str]]:
    """One compiled entry per name, the first found; a warning names those the root lacks."""
    entries, missing = [], []
    for name in names:
        rel = f"{name[0]}/{name}"
        found = next((root / d / rel for d in SEARCHED if (root / d / rel).is_file()), None)
        if found is None:
            missing.append(name)
        else:
            entries.append(file_entry(f"{IMAGE_DIR}/{rel}", found, mode=0o644, origin="terminfo"))
    if not missing:
        return entries, []
    return entries, [f"no terminfo entry for {', '.join(missing)} in {root}: the interactive restore's "
                     "screen cannot run on such a terminal (install ncurses-base)"]  # fmt: skip
