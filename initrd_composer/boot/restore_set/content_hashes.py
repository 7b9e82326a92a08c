"""Hash restored files while the extraction goes on, in a process of their own.

The verification reads every restored file back and compares its sha256 with the manifest.
Done after the extraction, that read is a second pass the restore waits for; done here, each
file is read back as soon as libarchive has finished it, while the next entries are being
written. A process, not a thread: libarchive's calls and the hashing would hand the GIL back
and forth thousands of times a second, which measured a third more CPU time than both alone.

A hash is kept with the inode, ctime, mtime and size the file had when it was read.
compare_tree uses it only when the file still has them all after the extraction (nothing
changed it since: writing data, times, a mode, an xattr or another hard link all move the
ctime); otherwise it reads the file again. The content is what the file holds, read from the
filesystem, either way. Should the hashing process fail, the verification reads everything.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from initrd_composer.boot.child_process import fork_child
from initrd_composer.boot.restore_set.manifest import fd_sha256, name_bytes, name_text

_NAMES_BUFFER = 4096  # names reach the hasher a few dozen at a time, soon after their files


@dataclass(frozen=True)
class KnownContent:
    sha256: str
    ino: int
    ctime_ns: int
    mtime_ns: int
    size: int

    def stands_for(self, st: os.stat_result) -> bool:
        """Whether the file `st` describes is the one hashed, unchanged since."""
        return (self.ino, self.ctime_ns, self.mtime_ns, self.size) == (
            st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size
        )  # fmt: skip


def hash_file(root: bytes, name: bytes) -> KnownContent | None:
    """The content of root/name as it is now; None if it cannot be read."""
    try:
        fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        return KnownContent(fd_sha256(fd, st.st_size), st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size)
    except OSError:
        return None
    finally:
        os.close(fd)


class ContentHasher:
    """add(name) passes a finished regular file (relative to root) to the hashing process;
    finish() waits for it and returns {name: KnownContent}. A file that cannot be read is
    left out (the verification reads it itself and reports what is wrong)."""

    def __init__(self, root: Path) -> None:
        root_b = os.fsencode(os.path.abspath(root))  # the extraction changes the cwd
        names_r, names_w = os.pipe()
        results_r, results_w = os.pipe()
        self._pid = fork_child(lambda: _serve(root_b, names_r, results_w), (names_r, results_w))
        os.close(names_r)
        os.close(results_w)
        self._names = os.fdopen(names_w, "wb", buffering=_NAMES_BUFFER)
        self._results = results_r

    def add(self, name: str) -> None:
        self._names.write(name_bytes(name) + b"\0")  # a file name cannot hold a NUL

    def finish(self) -> dict[str, KnownContent]:
        try:
            self._names.close()
        except OSError:  # the hasher is gone: nothing is known
            pass
        with os.fdopen(self._results, "rb") as f:
            data = f.read()
        os.waitpid(self._pid, 0)
        try:
            known: dict[str, KnownContent] = pickle.loads(data)
        except (pickle.UnpicklingError, EOFError, ValueError):
            return {}
        return known


def _serve(root: bytes, names_fd: int, results_fd: int) -> None:
    known: dict[str, KnownContent] = {}
    pending = b""
    with os.fdopen(names_fd, "rb") as names:
        while chunk := names.read1(1 << 16):
            *done, pending = (pending + chunk).split(b"\0")
            for name in done:
                content = hash_file(root, name)
                if content is not None:
                    known[name_text(name)] = content
    view = memoryview(pickle.dumps(known, protocol=pickle.HIGHEST_PROTOCOL))
    while view:
        view = view[os.write(results_fd, view) :]
