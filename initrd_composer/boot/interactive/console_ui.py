"""The interactive restore's screen on the console, with the standard library's curses: draws
menu_model.render's lines, reads keys, plans again when a choice changes. Over a serial
console the terminal reports no size (0x0), so 80x24 is assumed, as a VT100's; TERM is the
kernel's (`linux`), or `TERM=` on the kernel command line."""

from __future__ import annotations

import contextlib
import curses
import os
from collections.abc import Callable, Iterator

from initrd_composer.boot.interactive.menu_model import HEIGHT, WIDTH, Choices, Offer, View, handle, render


def _terminal_defaults() -> None:
    os.environ.setdefault("TERM", "linux")
    os.environ.setdefault("ESCDELAY", "50")  # Esc alone, not the start of an arrow key's sequence
    try:
        size = os.get_terminal_size(0)
    except OSError:
        size = os.terminal_size((0, 0))
    if not size.columns or not size.lines:
        os.environ.setdefault("COLUMNS", str(WIDTH))
        os.environ.setdefault("LINES", str(HEIGHT))


PRINTK = "/proc/sys/kernel/printk"


@contextlib.contextmanager
def _kernel_quiet(path: str = PRINTK) -> Iterator[None]:
    """Kernel messages kept off the console while the screen is drawn (they would scribble
    over it): only emergencies through; the level as it was afterwards (dmesg keeps them)."""
    try:
        with open(path) as f:
            saved = f.read().split()
        with open(path, "w") as f:
            f.write("1")
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError), open(path, "w") as f:
            f.write(saved[0] if saved else "7")


def _draw(screen: curses.window, lines: list[str]) -> None:
    screen.erase()
    rows, cols = screen.getmaxyx()
    for y, line in enumerate(lines[:rows]):
        try:
            screen.addnstr(y, 0, line, max(cols - 1, 0), curses.A_REVERSE if y == len(lines) - 1 else 0)
        except curses.error:
            pass  # a terminal smaller than 80x24: what fits is drawn
    screen.refresh()


def choose(offer_for: Callable[[Choices], Offer]) -> Choices | None:
    """The choices to restore with once `yes` was typed, or None for the shell."""
    _terminal_defaults()

    def loop(screen: curses.window) -> Choices | None:
        try:
            curses.curs_set(0)
        except curses.error:
            pass  # a terminal without an invisible cursor
        view = View()
        offer = offer_for(view.choices)
        while True:
            _draw(screen, render(view, offer))
            try:
                key = screen.getkey()
            except curses.error:
                continue
            view, action = handle(view, key, offer)
            if action == "replan":
                offer = offer_for(view.choices)
            elif action == "restore":
                return view.choices
            elif action == "shell":
                return None

    with _kernel_quiet():
        return curses.wrapper(loop)
