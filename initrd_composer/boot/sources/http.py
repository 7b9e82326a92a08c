"""Restore data over HTTP(S), read as a stream (stdlib only: http.client, ssl, socket).

`HttpStream(url)` is a read-only, non-seekable raw file object (readinto/read) that libarchive-c's
`stream_reader` and `tarfile.open(mode="r|")` consume directly: the body goes from the socket
into the caller's buffer, so nothing of the restore set is held in RAM.

When a connection drops (reset, timeout, a truncated chunked body, fewer bytes than
Content-Length) the stream reconnects and asks for the rest: `Range: bytes=N-` with `If-Range:`
the first response's strong ETag (else its Last-Modified), and accepts only a `206` whose
`Content-Range` starts at N and whose validators match. A `200` to that request means the
server ignored Range or the file changed: an error, never a silent restart that would hand the
restore duplicated bytes. Failed attempts without progress in between are retried a bounded
number of times with exponential back-off; final answers (404, 403, 410, a bad certificate)
are not retried.

`probe(url)` checks that a URL answers (HEAD, else a 1-byte Range GET) and gives its size,
Range support and validators, so the media stage can tell "server unreachable" from "not found".

Credentials in the URL (`http://user:pass@host/...`) are sent as Basic auth and never shown:
messages and reports carry the URL with its password replaced by `***`.
"""

from __future__ import annotations

import functools
import http.client
import io
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from initrd_composer.boot.sources import SourceError
from initrd_composer.boot.sources.http_wire import (
    HINTS,
    TRANSIENT_STATUS,
    Attempts,
    Connect,
    Endpoint,
    Failure,
    Log,
    Target,
    connector,
    exchange,
    judge,
    parse_url,
    quiet,
    redact,
    status_failure,
)

__all__ = ["HINTS", "Connect", "Endpoint", "HttpProbe", "HttpStats", "HttpStream", "SourceError", "Target",
           "connector", "parse_url", "probe", "redact"]  # fmt: skip

# The most one read takes from the socket (a read returns no more than this).
CHUNK_SIZE = 64 * 1024
# HEAD answers that mean "ask with GET" (servers and signed URLs that allow only GET).
HEAD_REFUSED = frozenset({400, 403, 405, 501})
CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.ASCII)
UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)\s*$", re.ASCII)


@dataclass(frozen=True)
class HttpStats:
    """What a stream did, for the `media` report section."""

    url: str  # as given (password hidden)
    final_url: str  # after redirects
    bytes: int  # delivered to the reader
    size: int | None  # as the server said, None if it did not
    resumes: int  # reconnections that continued at the byte reached
    failures: int  # failed attempts, retried or final
    seconds: float
    etag: str | None
    complete: bool  # the end of the body was reached

    def report(self, error: SourceError | None = None) -> dict[str, object]:
        """The `media` section entry: kind, source, ok, error, seconds, and the counts."""
        return {
            "kind": "http",
            "source": self.url,
            "ok": error is None and self.complete,
            "error": None if error is None else error.message,
            "reason": None if error is None else error.reason,
            "seconds": self.seconds,
            "bytes": self.bytes,
            "size": self.size,
            "resumes": self.resumes,
            "failures": self.failures,
        }


@dataclass(frozen=True)
class HttpProbe:
    """What `probe` found at a URL."""

    url: str  # as given (password hidden)
    final_url: str  # after redirects
    status: int
    method: str  # HEAD, or GET when the server refused HEAD
    size: int | None
    accept_ranges: bool  # a dropped stream can resume
    etag: str | None
    last_modified: str | None
    seconds: float


# -- the stream ------------------------------------------------------------------------------
class HttpStream(io.RawIOBase):
    """The body at `url` as a read-only, non-seekable byte stream that survives dropped
    connections (see the module docstring). The first read connects; a read returns at most
    `chunk_size` bytes; a SourceError from a read is final, and every later read raises it
    again (never a quiet end of file)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_redirects: int = 5,
        ca_file: str | None = None,
        chunk_size: int = CHUNK_SIZE,
        sleep: Callable[[float], object] = time.sleep,
        connect: Connect | None = None,
        log: Log | None = None,
    ) -> None:
        super().__init__()
        self._chunk_size = max(chunk_size, 1)
        self._origin = self._target = parse_url(url)
        self._timeout_s = timeout_s
        self._max_redirects = max_redirects
        self._connect = connect or connector(ca_file)
        self._log = log or quiet
        self._attempts = Attempts(retries, backoff_s, max_backoff_s, sleep, self._log)
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._pos = 0  # bytes delivered: where a resume starts
        self._end: int | None = None  # where the current response's body ends, if it says
        self._size: int | None = None
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._dropped = False  # the current connection replaces a failed one
        self._broken: Failure | None = None  # a failure the next read must handle first
        self._resumes = 0
        self._eof = False
        self._error: SourceError | None = None
        self._started: float | None = None
        self._finished: float | None = None

    def readable(self) -> bool:
        return True

    @property
    def error(self) -> SourceError | None:
        """The final error, if any: a reader behind a C callback (libarchive) may only see EOF."""
        return self._error

    @property
    def size(self) -> int | None:
        return self._size

    def readinto(self, buffer: Any) -> int:
        if self._error is not None:
            raise self._error
        if self.closed:
            raise ValueError("read from a closed HTTP stream")
        view = memoryview(buffer).cast("B")
        if self._eof or not len(view):
            return 0
        if self._started is None:
            self._started = time.monotonic()
        try:
            return self._read(view)
        except SourceError as exc:
            self._error = exc
            self._stop()
            raise

    def close(self) -> None:
        self._stop()
        super().close()

    def stats(self) -> HttpStats:
        end = self._finished if self._finished is not None else time.monotonic()
        seconds = 0.0 if self._started is None else end - self._started
        # complete also when every byte the server announced was read, though the reader (a
        # tar reader stops at its end-of-archive blocks) never asked for the end of the file
        complete = self._eof or (self._size is not None and self._pos == self._size)
        return HttpStats(self._origin.shown, self._target.shown, self._pos, self._size, self._resumes,
                         self._attempts.failures, round(seconds, 3), self._etag, complete)  # fmt: skip

    # -- reading -------------------------------------------------------------------------------
    def _read(self, view: memoryview) -> int:
        while True:
            if self._broken is not None:  # the last read delivered what arrived before a failure
                failure, self._broken = self._broken, None
                self._failed(failure)
            resp = self._resp if self._resp is not None else self._open()
            if resp is None:  # a resume found the body already complete (416 at its end)
                return 0
            # One chunk at a time, never past what the response said it carries: a failure
            # mid-read loses the bytes of that read (http.client does not say how many
            # arrived), so a chunk is also the most a resume asks for again.
            room = self._chunk_size if self._end is None else min(self._chunk_size, self._end - self._pos)
            try:
                n = resp.readinto(view[:room]) if room > 0 else 0
            except (OSError, http.client.HTTPException) as exc:  # reset, timeout, bad chunk
                kept = exc.partial if isinstance(exc, http.client.IncompleteRead) else b""
                if not kept:
                    self._failed(judge(exc, in_body=True))
                    continue
                # a chunked body cut short says which whole chunks arrived: deliver them now,
                # count the failure at the next read
                view[: len(kept)] = kept
                self._pos += len(kept)
                self._attempts.progressed()
                self._broken = judge(exc, in_body=True)
                self._close_connection()
                return len(kept)
            if n:
                self._pos += n
                self._attempts.progressed()
                return n
            if self._end is not None and self._pos < self._end:  # http.client returns b"" here
                self._failed(Failure("interrupted", f"connection closed at byte {self._pos} of {self._end}",
                                      transient=True))  # fmt: skip
                continue
            self._close_connection()
            if self._size is not None and self._pos < self._size:
                continue  # the server sent a shorter range than asked for: ask for the rest
            self._finish()
            return 0

    def _open(self) -> http.client.HTTPResponse | None:
        """Connect and ask for the body from self._pos on, retrying; None at the body's end."""
        while True:
            try:
                conn, resp, target = exchange(self._connect, self._target, "GET", self._range_headers(),
                                              timeout_s=self._timeout_s, max_redirects=self._max_redirects)
            except (OSError, http.client.HTTPException, Failure) as exc:
                self._failed(judge(exc, in_body=False))
                continue
            self._conn, self._resp, self._target = conn, resp, target
            try:
                if self._accept(resp):
                    self._dropped = False
                    return resp
                self._finish()
                return None
            except Failure as failure:
                self._failed(failure)

    def _range_headers(self) -> dict[str, str]:
        if not self._pos:  # nothing delivered yet: a plain GET, a 200 is what we want
            return {}
        headers = {"Range": f"bytes={self._pos}-"}
        strong = self._etag if self._etag and not self._etag.startswith("W/") else None
        if strong or self._last_modified:  # a weak ETag may not be used in If-Range (RFC 9110)
            headers["If-Range"] = strong or self._last_modified or ""
        return headers

    def _accept(self, resp: http.client.HTTPResponse) -> bool:
        """Check a response against what was asked; False if it says the body is complete."""
        if resp.status == 200:
            self._accept_whole(resp)
        elif resp.status == 206:
            self._accept_part(resp)
        elif resp.status == 416 and self._at_end(resp):
            return False
        else:
            raise status_failure(resp.status, resp.reason)
        return True

    def _accept_whole(self, resp: http.client.HTTPResponse) -> None:
        if self._pos:  # bytes already delivered: restarting would duplicate them
            raise self._changed(resp) or Failure(
                "range-ignored", f"the server answered 200 to Range: bytes={self._pos}- (it ignores Range)",
                transient=False, status=200,
            )  # fmt: skip
        self._etag, self._last_modified = resp.getheader("ETag"), resp.getheader("Last-Modified")
        self._size = self._end = resp.length  # None when chunked or ended by closing

    def _accept_part(self, resp: http.client.HTTPResponse) -> None:
        header = resp.getheader("Content-Range") or ""
        match = CONTENT_RANGE.match(header)
        if match is None:
            raise Failure("protocol", f"206 with Content-Range {header!r}", transient=False, status=206)
        first, last = int(match[1]), int(match[2])
        total = None if match[3] == "*" else int(match[3])
        if first != self._pos or last < first:
            raise Failure("protocol", f"asked for bytes {self._pos}-, the server sent {first}-{last}",
                           transient=False, status=206)  # fmt: skip
        changed = self._changed(resp)
        if changed is None and total is not None and self._size is not None and total != self._size:
            changed = Failure("changed", f"the file is now {total} bytes, was {self._size}", transient=False)
        if changed is not None:
            raise changed
        self._size = total if total is not None else self._size
        self._end = last + 1
        if self._dropped:
            self._resumes += 1
            self._log(f"http: {self._target.shown}: resumed at byte {self._pos}")

    def _at_end(self, resp: http.client.HTTPResponse) -> bool:
        # A drop after the last byte but before the body's end was seen (a chunked body without
        # its last chunk): the server says the range starts at the end. That is EOF, not an error.
        match = UNSATISFIED_RANGE.match(resp.getheader("Content-Range") or "")
        total = int(match[1]) if match else None
        return bool(self._pos) and total == self._pos and self._size in (None, self._pos)

    def _changed(self, resp: http.client.HTTPResponse) -> Failure | None:
        for name, old in (("ETag", self._etag), ("Last-Modified", self._last_modified)):
            new = resp.getheader(name)
            if old and new and new != old:
                return Failure("changed", f"the file changed on the server ({name} {old} -> {new})",
                                transient=False, status=resp.status)  # fmt: skip
        return None

    def _failed(self, failure: Failure) -> None:
        self._close_connection()
        self._dropped = self._dropped or bool(self._pos)
        self._attempts.failed(failure, self._target.shown)

    def _close_connection(self) -> None:
        conn, self._conn, self._resp = self._conn, None, None
        if conn is not None:
            conn.close()

    def _finish(self) -> None:
        self._eof = True
        self._stop()

    def _stop(self) -> None:
        self._close_connection()
        if self._started is not None and self._finished is None:
            self._finished = time.monotonic()


# -- probing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Answer:
    status: int
    phrase: str
    target: Target
    headers: Mapping[str, str]  # lower-case names


def probe(
    url: str,
    *,
    timeout_s: float = 10.0,
    retries: int = 2,
    backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
    max_redirects: int = 5,
    ca_file: str | None = None,
    sleep: Callable[[float], object] = time.sleep,
    connect: Connect | None = None,
    log: Log | None = None,
) -> HttpProbe:
    """Whether `url` answers, and what it holds; a SourceError says why not (its `reason`:
    unresolved / unreachable / not-found / forbidden / tls / ...)."""
    origin = parse_url(url)
    started = time.monotonic()
    attempts = Attempts(retries, backoff_s, max_backoff_s, sleep, log or quiet)
    ask = functools.partial(_ask, connect=connect or connector(ca_file), attempts=attempts,
                            timeout_s=timeout_s, max_redirects=max_redirects)  # fmt: skip
    method = "HEAD"
    answer = ask(origin, method, {})
    if answer.status in HEAD_REFUSED:
        method = "GET"
        answer = ask(origin, method, {"Range": "bytes=0-0"})
    h = answer.headers
    if answer.status == 206:
        match = CONTENT_RANGE.match(h.get("content-range", ""))
        size = int(match[3]) if match and match[3] != "*" else None
        ranges = True
    elif answer.status == 416 and method == "GET":  # an empty file has no byte 0
        match = UNSATISFIED_RANGE.match(h.get("content-range", ""))
        size, ranges = (int(match[1]) if match else None), True
    elif answer.status == 200:
        length = h.get("content-length", "")
        size = int(length) if length.isdigit() else None
        ranges = method == "HEAD" and "bytes" in h.get("accept-ranges", "").lower()
    else:
        raise attempts.error(status_failure(answer.status, answer.phrase), answer.target.shown)
    return HttpProbe(origin.shown, answer.target.shown, answer.status, method, size, ranges, h.get("etag"),
                     h.get("last-modified"), round(time.monotonic() - started, 3))  # fmt: skip


def _ask(
    target: Target, method: str, headers: Mapping[str, str], *, connect: Connect, attempts: Attempts,
    timeout_s: float, max_redirects: int,
) -> _Answer:
    """One question with retries for transport failures and busy servers; the body is not read."""
    while True:
        try:
            conn, resp, final = exchange(connect, target, method, headers, timeout_s=timeout_s,
                                         max_redirects=max_redirects)  # fmt: skip
        except (OSError, http.client.HTTPException, Failure) as exc:
            attempts.failed(judge(exc, in_body=False), target.shown)
            continue
        names = {k.lower(): v for k, v in resp.getheaders()}
        conn.close()
        if resp.status in TRANSIENT_STATUS:
            attempts.failed(status_failure(resp.status, resp.reason), final.shown)
            continue
        return _Answer(resp.status, resp.reason, final, names)
