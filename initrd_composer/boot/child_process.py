"""Child processes for work done side by side (archives, extractions, hashing).

A child never returns into the caller's code: it runs its work and exits (os._exit: no
atexit handlers, no flushing of buffers it inherited), 0 when the work returned.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def fork_child(work: Callable[[], None], keep: tuple[int, ...] | None = None) -> int:
    """Fork; in the child run `work`, with only `keep` open if given (and stdin, stdout,
    stderr: a pipe end of another helper, held open by accident, would keep that helper from
    ever seeing the end of its input); the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        if keep is not None:
            _close_all_but(*keep)
        work()
        status = 0
    finally:
        os._exit(status)


def fork_with_result(work: Callable[[], bytes]) -> tuple[int, int]:
    """Fork; the child sends what `work` returns down a pipe (`work` turns its own errors into
    a result: the parent must learn what failed). (pid, the pipe's read end)."""
    read_end, write_end = os.pipe()

    def send() -> None:
        os.close(read_end)
        view = memoryview(work())
        while view:
            view = view[os.write(write_end, view) :]

    pid = fork_child(send)
    os.close(write_end)
    return pid, read_end


def _close_all_but(*keep: int) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
