"""Write a set's archives side by side: one child process per archive, a few at a time.

A capture is bound by zstd and sha256, both C code, but one archive's pipeline (read a
block, hash it, hand it to libarchive) runs in one thread that waits on each step, and a
machine's filesystems are independent: archiving two at once keeps every CPU busy where one
at a time left them idle between blocks. Processes, not threads: libarchive's disk reader
changes the working directory as it descends (fchdir), which a process has only one of.

Each child writes its archive to a temporary name, fsyncs and renames it, and sends back its
manifest records (pickled) through a pipe; its bytes of file data read so far are in a
shared page the parent sums for the progress bar. An error in one child stops the others;
their temporary files are removed, so nothing half-written is left looking complete.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import selectors
import signal
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from initrd_composer.boot.child_process import fork_with_result
from initrd_composer.boot.restore_set.manifest import ArchiveRecord
from initrd_composer.capture.archive_write import Progress, write_archive
from initrd_composer.capture.durable import durable_file, part_path
from initrd_composer.capture.errors import CaptureError

PROGRESS_EVERY_S = 0.25
_SLOT = struct.Struct("Q")


@dataclass(frozen=True)
class ArchiveJob:
    name: str  # the archive's name in the manifest
    file: str  # its file name in the set directory
    root: Path  # the tree to archive
    excludes: tuple[str, ...]


@dataclass(frozen=True)
class ArchiveDone:
    """One archive on disk: its record, the file data read and its child's wall time."""

    record: ArchiveRecord
    data_bytes: int
    seconds: float


def write_one(set_dir: Path, job: ArchiveJob, threads: int | None, progress: Progress | None) -> ArchiveDone:
    """One archive: written under its temporary name, fsynced, renamed."""
    started = time.monotonic()
    with durable_file(set_dir / job.file) as out:
        written = write_archive(job.root, out, excludes=job.excludes, threads=threads, progress=progress)
    record = ArchiveRecord(job.name, job.file, written.sha256, written.size, written.files)
    return ArchiveDone(record, written.data_bytes, round(time.monotonic() - started, 3))


def default_parallel(jobs: int) -> int:
    return max(1, min(jobs, os.cpu_count() or 1))


@dataclass
class _Child:
    index: int
    pid: int
    fd: int
    chunks: list[bytes]


def write_archives(
    set_dir: Path,
    jobs: Sequence[ArchiveJob],
    *,
    threads: int | None = None,
    parallel: int | None = None,
    progress: Progress | None = None,
    on_archive: Callable[[ArchiveDone], None] | None = None,
) -> list[ArchiveRecord]:
    """Every job's archive, at most `parallel` at once (default: one per CPU); records in the
    jobs' order, `on_archive` called in that order too. `progress` gets the bytes of file data
    read so far over all jobs. Raises the first child's CaptureError."""
    width = parallel if parallel is not None else default_parallel(len(jobs))
    shared = mmap.mmap(-1, _SLOT.size * max(len(jobs), 1))  # anonymous, shared with the children
    results: dict[int, ArchiveDone] = {}
    running: dict[int, _Child] = {}
    sel = selectors.DefaultSelector()
    queue = list(range(len(jobs)))
    reported = 0
    last_progress = 0.0
    interrupted = _DeferredInterrupt()
    try:
        while queue or running:
            interrupted.check()
            while queue and len(running) < width:
                child = _start(set_dir, jobs, queue.pop(0), threads, shared)
                running[child.fd] = child
                sel.register(child.fd, selectors.EVENT_READ)
            finished = False
            for key, _ in sel.select(PROGRESS_EVERY_S):
                child = running[key.fd]
                if chunk := os.read(child.fd, 1 << 16):
                    child.chunks.append(chunk)
                    continue
                sel.unregister(child.fd)
                del running[child.fd]
                results[child.index] = _finish(child, jobs[child.index])
                finished = True
            now = time.monotonic()
            if progress is not None and (finished or now - last_progress >= PROGRESS_EVERY_S):
                last_progress = now
                progress(sum(_SLOT.unpack_from(shared, _SLOT.size * i)[0] for i in range(len(jobs))))
            while on_archive is not None and reported in results:
                on_archive(results[reported])
                reported += 1
    except BaseException:
        for child in running.values():
            _stop(child, set_dir, jobs[child.index])
        raise
    finally:
        interrupted.restore()
        sel.close()
        shared.close()
    return [results[i].record for i in range(len(jobs))]


class _DeferredInterrupt:
    """^C noted by a handler and raised by the loop: raised from the handler it could land in
    an at-fork hook run as a child starts, where Python prints and drops it. Installed only
    over Python's default handler (PID 1 ignores SIGINT, and goes on ignoring it)."""

    def __init__(self) -> None:
        self.seen = False
        self.previous: object = None
        try:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self.previous = signal.signal(signal.SIGINT, self._note)
        except ValueError:  # not the main thread: signals are not ours to handle
            pass

    def _note(self, _signum: int, _frame: object) -> None:
        self.seen = True

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.previous = None
        self.check()


def _start(
    set_dir: Path, jobs: Sequence[ArchiveJob], index: int, threads: int | None, shared: mmap.mmap
) -> _Child:
    def report(done: int) -> None:
        _SLOT.pack_into(shared, _SLOT.size * index, done)

    def work() -> bytes:  # in the child: one archive, its outcome pickled
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its children itself
        try:
            outcome: tuple[object, ...] = ("ok", write_one(set_dir, jobs[index], threads, report))
        except CaptureError as exc:
            outcome = ("error", exc.message, exc.hint)
        except KeyboardInterrupt:
            outcome = ("interrupted",)
        except BaseException as exc:  # still a result: the parent must learn what failed
            outcome = ("error", f"archiving {jobs[index].root} failed: {type(exc).__name__}: {exc}",
                       "report this as a bug")  # fmt: skip
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)

    pid, fd = fork_with_result(work)
    return _Child(index, pid, fd, [])


def _finish(child: _Child, job: ArchiveJob) -> ArchiveDone:
    os.close(child.fd)
    _, status = os.waitpid(child.pid, 0)
    try:
        outcome = pickle.loads(b"".join(child.chunks))
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise CaptureError(
            f"archiving {job.root} died (wait status {status})", "see the messages above; try again"
        ) from exc
    if outcome[0] == "interrupted":
        raise KeyboardInterrupt
    if outcome[0] == "error":
        raise CaptureError(outcome[1], outcome[2])
    done: ArchiveDone = outcome[1]
    return done


def _stop(child: _Child, set_dir: Path, job: ArchiveJob) -> None:
    """Kill a child that has not finished and remove what it was writing."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child.pid, 0)
    with contextlib.suppress(OSError):
        os.close(child.fd)
    with contextlib.suppress(OSError):
        part_path(set_dir / job.file).unlink()
