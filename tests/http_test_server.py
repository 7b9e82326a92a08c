"""An HTTP(S) server on 127.0.0.1 for the boot side's reader, started by the tests.

http.server has no Range support, so the handler implements it; a Scenario makes it drop a
response after K body bytes (FIN, RST or a stall past the client's timeout), ignore Range,
replace the file between requests, redirect, refuse HEAD, ask for a login, send short ranges
or a wrong Content-Range, answer 503 first, or serve a 64 MiB file it generates as it goes.
`serving()` shuts it down on the way out and releases stalls.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MiB = 1 << 20
PIECE = 64 * 1024  # the server writes in pieces this size


@dataclass
class Served:
    """A file: stored bytes, a pattern of `generated` bytes made as it is sent, or a file
    on disk read as it is sent (`path`: a restore set's archives are not held in RAM)."""

    data: bytes = b""
    generated: int = 0
    etag: str | None = '"v1"'
    last_modified: str | None = None
    path: Path | None = None

    @property
    def size(self) -> int:
        if self.path is not None:
            return self.path.stat().st_size
        return self.generated or len(self.data)

    def pieces(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) in pieces of at most PIECE, cut at multiples of PIECE."""
        offset = start
        while offset < end:
            block, skip = divmod(offset, PIECE)
            stop = min(end, (block + 1) * PIECE)
            if self.generated:  # each block: its index as 8 bytes, repeated; never stored whole
                yield (block.to_bytes(8, "little") * (PIECE // 8))[skip : skip + stop - offset]
            elif self.path is not None:
                with self.path.open("rb") as f:
                    f.seek(offset)
                    yield f.read(stop - offset)
            else:
                yield self.data[offset:stop]
            offset = stop


@dataclass(frozen=True)
class Drop:
    after: int  # body bytes of the response sent before it
    how: str = "close"  # close (FIN), reset (RST), stall (silence past the client's timeout)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None
    if_range: str | None
    authorization: str | None


@dataclass
class Scenario:
    files: dict[str, Served] = field(default_factory=dict)
    drops: list[Drop] = field(default_factory=list)  # one per body response, in order
    path_drops: dict[str, list[Drop]] = field(default_factory=dict)  # the same, for one path only
    redirects: dict[str, tuple[int, str]] = field(default_factory=dict)
    statuses: dict[str, list[int]] = field(default_factory=dict)  # answered first, in order
    ignore_range: bool = False
    honour_if_range: bool = True
    etag_after_first: str | None = None  # the file replaced after its first response
    chunked: bool = False
    max_range: int | None = None  # at most this many bytes per 206
    shift_range: int = 0  # serve (and say) a range starting this much before the one asked
    head_refused: bool = False
    login: str | None = None  # the Authorization value required
    requests: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)

    def ranges(self) -> list[str | None]:
        return [r.range for r in self.requests if r.method == "GET"]


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, scenario: Scenario, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.scenario = scenario
        if tls is not None:  # handshake in the handler's thread, not in accept()
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that go away (TLS refused, a test's error path) are expected


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        sc = self.server.scenario
        path = urlsplit(self.path).path
        h = self.headers
        with sc.lock:
            seen = Seen(self.command, path, h.get("Range"), h.get("If-Range"), h.get("Authorization"))
            sc.requests.append(seen)
            queued = sc.statuses.get(path)
            status = queued.pop(0) if queued else None
        served = sc.files.get(path)
        if self.command == "HEAD" and sc.head_refused:
            return self._empty(405)
        if sc.login and h.get("Authorization") != sc.login:
            return self._empty(401)
        if path in sc.redirects:
            code, location = sc.redirects[path]
            return self._empty(code, Location=location)
        if status is not None:
            return self._empty(status)
        if served is None:
            return self._empty(404)
        self._send(served, body)

    def _wanted(self, served: Served) -> tuple[int, int] | None:
        """The range asked for, as [start, end), or None for the whole file."""
        sc, asked = self.server.scenario, self.headers.get("Range")
        if asked is None or sc.ignore_range:
            return None
        if_range = self.headers.get("If-Range")
        validators = (served.etag, served.last_modified)
        if if_range is not None and sc.honour_if_range and if_range not in validators:
            return None  # RFC 9110: the file changed, send all of it
        first, _, last = asked.removeprefix("bytes=").partition("-")
        end = min(int(last) + 1, served.size) if last else served.size
        return max(int(first) - sc.shift_range, 0), end

    def _send(self, served: Served, body: bool) -> None:
        sc = self.server.scenario
        wanted = self._wanted(served)
        start, end = wanted or (0, served.size)
        if wanted is not None and start >= served.size:
            return self._empty(416, **{"Content-Range": f"bytes */{served.size}"})
        if wanted is not None and sc.max_range:
            end = min(end, start + sc.max_range)
        self.send_response(200 if wanted is None else 206)
        if wanted is not None:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{served.size}")
        if not sc.ignore_range:
            self.send_header("Accept-Ranges", "bytes")
        for name, value in (("ETag", served.etag), ("Last-Modified", served.last_modified)):
            if value:
                self.send_header(name, value)
        if sc.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if not body:
            return
        path = urlsplit(self.path).path
        with sc.lock:
            queued = sc.path_drops.get(path)
            drop = queued.pop(0) if queued else sc.drops.pop(0) if sc.drops else None
            if sc.etag_after_first:  # whatever comes next sees the replaced file
                served.etag, sc.etag_after_first = sc.etag_after_first, None
        try:
            self._body(served.pieces(start, end), drop)
        except OSError:  # the client went away
            self.close_connection = True

    def _body(self, pieces: Iterator[bytes], drop: Drop | None) -> None:
        sent = 0
        for piece in pieces:
            if drop is not None and sent + len(piece) >= drop.after:
                cut = drop.after - sent
                if self.server.scenario.chunked and cut < len(piece):  # cut inside a chunk
                    self.wfile.write(b"%x\r\n%s" % (len(piece), piece[:cut]))
                else:
                    self._write(piece[:cut])
                return self._drop(drop.how)
            self._write(piece)
            sent += len(piece)
        if self.server.scenario.chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write(self, piece: bytes) -> None:
        if not piece:
            return
        if self.server.scenario.chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        else:
            self.wfile.write(piece)

    def _drop(self, how: str) -> None:
        self.close_connection = True
        if how == "stall":
            self.server.scenario.release.wait(20)
        if how == "reset":  # close with SO_LINGER 0: an RST, not a FIN
            # (after a pause: an RST discards what the client's kernel still holds, so the
            # client would restart at 0, which is right but shows no Range)
            self.server.scenario.release.wait(1.0)
            sock = socket.socket(fileno=self.connection.detach())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)  # FIN after the bytes sent so far

    def _empty(self, status: int, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextlib.contextmanager
def serving(scenario: Scenario, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """The server's base URL while the block runs (127.0.0.1, a free port)."""
    server = Server(scenario, tls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        scenario.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)




def directory_files(root: Path, prefix: str) -> dict[str, Served]:
    """Every file of `root` (not below it) served from disk at `prefix` + its name, each
    with its own strong ETag (what a static server sends)."""
    files = {}
    for entry in sorted(root.iterdir()):
        if entry.is_file():
            st = entry.stat()
            files[prefix + entry.name] = Served(path=entry, etag=f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
    return files
