"""Read a directory's small files ahead of the archiver, so it does not wait on each one.

libarchive reads file after file, each with one synchronous read: on a cold cache a tree of
small files (/usr/share, /etc, a Python site-packages) costs a disk round trip per file, and
the CPUs wait. As the walk enters a directory, a thread asks the kernel to read its small
files in (posix_fadvise WILLNEED: asynchronous, the disk's queue orders the reads), ahead
of the archiver but never more than BUDGET bytes ahead of what it has read, so a large
filesystem is not pulled into the page cache at once. Large files need no help: the
kernel's own readahead streams them.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
import time
from collections.abc import Callable

SMALL = 1 << 20  # files up to this size are read ahead whole
BUDGET = 64 << 20  # bytes asked for ahead of the archiver
_WAIT_S = 0.005
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Prefetcher:
    """directory(path) queues a directory the walk has entered; close() stops the thread.
    `consumed` gives the bytes the archiver has read so far."""

    def __init__(self, device: int, consumed: Callable[[], int]) -> None:
        self._device = device
        self._consumed = consumed
        self._asked = 0
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._noatime = os.O_NOATIME  # dropped at the first EPERM (not the files' owner)
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def directory(self, path: bytes) -> None:
        self._queue.put(path)

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set() and (path := self._queue.get()) is not None:
            try:
                with os.scandir(path) as it:
                    entries = [e for e in it if e.is_file(follow_symlinks=False)]
            except OSError:
                continue
            for entry in entries:
                if self._stop.is_set():
                    return
                self._ask(entry)

    def _ask(self, entry: os.DirEntry[bytes]) -> None:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return
        if st.st_dev != self._device or not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= SMALL:
            return
        while self._asked - self._consumed() > BUDGET and not self._stop.is_set():
            time.sleep(_WAIT_S)
        if self._stop.is_set():
            return
        try:
            fd = os.open(entry.path, _FLAGS | self._noatime)
        except PermissionError:
            if not self._noatime:
                return
            self._noatime = 0
            return self._ask(entry)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, st.st_size, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
        self._asked += st.st_size
