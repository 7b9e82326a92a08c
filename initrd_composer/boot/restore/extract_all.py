"""Steps 6 and 7 of nuke: extract every archive into its own freshly made filesystem, all
filesystems at once, then verify each restored tree against the manifest.

Each filesystem is mounted on its own directory (not yet nested under the root), so the
extractions run side by side, one child process each (zstd decompression, the bulk of the
work, is libarchive's, in C), and each verification walks exactly one filesystem. Each
regular file is read back and hashed by a process as soon as it is written (content_hashes),
so the verification after the extraction is mostly a walk comparing metadata.
Progress: one console line per filesystem every few seconds (bytes of the archive read, of
its size), and one when it ends.

The archive's own sha256 is computed while it is read; a mismatch does not stop there: the
tree is verified anyway, so the failure names the files the damage reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from initrd_composer.boot.child_process import fork_with_result
from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.content_hashes import ContentHasher
from initrd_composer.boot.restore_set.extract import extract_stream
from initrd_composer.boot.restore_set.location import SequentialLocation, SetLocation, Stream
from initrd_composer.boot.restore_set.manifest import ArchiveRecord
from initrd_composer.boot.restore_set.verify import Mismatch, compare_tree

PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class ExtractJob:
    archive: ArchiveRecord
    source: SetLocation  # where the archive is read from (archive.file in it)
    dest: Path  # the mounted, empty filesystem


@dataclass
class ExtractResult:
    name: str
    entries: int = 0
    file_bytes: int = 0  # content bytes the manifest lists
    seconds: float = 0.0
    verify_seconds: float = 0.0
    error: str = ""  # extraction failed (libarchive, I/O) or the archive's sha256 differs
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error and not self.mismatches


class _CountingReader:
    """The archive read once, front to back: hashed, counted for the progress lines. A read
    that fails is remembered and ends the stream (an exception raised into libarchive's C
    callback would only print a traceback and look like a truncated archive)."""

    def __init__(self, stream: Stream) -> None:
        self._f = stream
        self.sha256 = hashlib.sha256()
        self.done = 0
        self.failure: Exception | None = None

    def readinto(self, buf: bytearray | memoryview) -> int:
        if self.failure is not None:
            return 0
        try:
            n = self._f.readinto(buf)
        except Exception as exc:  # OSError, or an HTTP source's final SourceError
            self.failure = exc
            return 0
        if n:
            self.sha256.update(memoryview(buf)[:n])
            self.done += n
        return n or 0

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size > 0 else 1 << 20)
        return bytes(buf[: self.readinto(buf)])

    def seekable(self) -> bool:  # read once, in order: the hash must see every byte
        return False

    def close(self) -> None:
        self._f.close()


def _content_bytes(archive: ArchiveRecord) -> int:
    return sum(r.size for r in archive.files if r.type == "file")


def _extract_one(job: ExtractJob, log: Callable[[str], None]) -> ExtractResult:
    result = ExtractResult(job.archive.name, file_bytes=_content_bytes(job.archive))
    started = time.monotonic()
    try:
        reader = _CountingReader(job.source.open(job.archive.file))
    except OSError as exc:
        result.error = f"cannot open {job.archive.file}: {exc.strerror or exc}"
        return result
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(PROGRESS_EVERY_S):
            pct = 100 * reader.done // max(job.archive.size, 1)
            rate = reader.done / max(time.monotonic() - started, 1e-3) / 1e6
            log(
                f"restore: extracting {job.archive.name}: {pct}% of {job.archive.size / 1e6:.0f} MB "
                f"({rate:.1f} MB/s)"
            )

    ticker = threading.Thread(target=report, daemon=True)
    ticker.start()
    hasher = ContentHasher(job.dest)
    try:
        result.entries = extract_stream(reader, job.dest, None, label=job.archive.file, on_file=hasher.add)
        while reader.read(1 << 20):  # what libarchive left unread: the end-of-archive padding
            pass
        if reader.sha256.hexdigest() != job.archive.sha256:
            result.error = (
                f"archive {job.archive.file} ({job.archive.name}) is corrupted: "
                "its sha256 differs from the manifest"
            )
    except RestoreSetError as exc:
        result.error = exc.message
    finally:
        stop.set()
        reader.close()
        known = hasher.finish()
    if reader.failure is not None:  # what the source said, not libarchive's "truncated"
        why = getattr(reader.failure, "message", None) or str(reader.failure)
        result.error = f"cannot read {job.archive.file}: {why}"  # an HTTP error names its URL
    result.seconds = round(time.monotonic() - started, 3)
    if result.error and "corrupted" not in result.error:
        return result  # libarchive stopped: its message names the entry it was at
    verify_started = time.monotonic()
    result.mismatches = compare_tree(job.dest, job.archive, known=known)
    result.verify_seconds = round(time.monotonic() - verify_started, 3)
    return result


_MAX_REPORTED = 1000  # mismatches a child sends back; more only make the report longer


def _result_data(result: ExtractResult) -> dict[str, Any]:
    data = {k: v for k, v in result.__dict__.items() if k != "mismatches"}
    data["mismatches"] = [[m.path, m.what] for m in result.mismatches[:_MAX_REPORTED]]
    data["more"] = max(len(result.mismatches) - _MAX_REPORTED, 0)
    return data


def _result_json(result: ExtractResult) -> bytes:
    return json.dumps(_result_data(result)).encode()


def _result_of(name: str, raw: bytes, status: int) -> ExtractResult:
    try:
        data = json.loads(raw)
    except ValueError:
        return ExtractResult(name, error=f"the extraction of {name} died (wait status {status})")
    return _result_from(data)


def _result_from(data: dict[str, Any]) -> ExtractResult:
    mismatches = [Mismatch(path, what) for path, what in data.pop("mismatches")]
    if data.pop("more"):
        mismatches.append(Mismatch("...", "more differences not shown"))
    return ExtractResult(**data, mismatches=mismatches)


def _fork(job: ExtractJob, log: Callable[[str], None]) -> tuple[int, int]:
    """One child per filesystem: libarchive's disk writer works relative to the current
    directory, which a process has only one of, so threads cannot extract side by side."""

    def work() -> bytes:
        try:
            return _result_json(_extract_one(job, log))
        except BaseException as exc:  # still a result: the parent must learn what failed
            return _result_json(ExtractResult(job.archive.name, error=f"{type(exc).__name__}: {exc}"))

    return fork_with_result(work)


def _one_after_another(
    jobs: Sequence[ExtractJob], source: SequentialLocation, log: Callable[[str], None]
) -> list[ExtractResult]:
    """A set on a tape: one drive, read front to back. One child extracts the archives in
    their order on the tape, each stream starting where the last one ended."""
    order = sorted(range(len(jobs)), key=lambda i: source.position(jobs[i].archive.file))

    def work() -> bytes:
        out: dict[int, dict[str, Any]] = {}
        try:
            for i in order:
                try:
                    out[i] = _result_data(_extract_one(jobs[i], log))
                except BaseException as exc:  # the others still get their turn
                    failed = ExtractResult(jobs[i].archive.name, error=f"{type(exc).__name__}: {exc}")
                    out[i] = _result_data(failed)
        finally:
            source.release()
        return json.dumps([out[i] for i in range(len(jobs))]).encode()

    pid, fd = fork_with_result(work)
    raw = _drain(fd)
    _, status = os.waitpid(pid, 0)
    try:
        return [_result_from(data) for data in json.loads(raw)]
    except ValueError:
        why = f"the extraction from {source.shown} died (wait status {status})"
        return [ExtractResult(job.archive.name, error=why) for job in jobs]


def _drain(fd: int) -> bytes:
    chunks = []
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def extract_and_verify(jobs: Sequence[ExtractJob], log: Callable[[str], None]) -> list[ExtractResult]:
    """Run every job, each filesystem in its own child process at the same time (from a tape:
    one after the other); results in the jobs' order. Never raises for a damaged archive:
    the result says what went wrong."""
    if jobs and isinstance(jobs[0].source, SequentialLocation):
        done = _one_after_another(jobs, jobs[0].source, log)
    else:
        children = [_fork(job, log) for job in jobs]
        done = []
        for job, (pid, fd) in zip(jobs, children, strict=True):
            raw = _drain(fd)
            _, status = os.waitpid(pid, 0)
            done.append(_result_of(job.archive.name, raw, status))
    for r in done:
        if r.ok:
            log(
                f"restore: {r.name}: {r.entries} entries, {r.file_bytes / 1e6:.1f} MB extracted in "
                f"{r.seconds:.1f} s, verified in {r.verify_seconds:.1f} s"
            )
    return done


def failure_lines(results: Sequence[ExtractResult], limit: int = 20) -> list[str]:
    """What failed, one line per archive and one per differing file (up to `limit` in all)."""
    lines: list[str] = []
    for r in results:
        if r.error:
            lines.append(f"{r.name}: {r.error}")
        lines.extend(f"{r.name}: {m.path}: {m.what}" for m in r.mismatches)
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])
