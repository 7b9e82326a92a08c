"""scripts/bench's PXE transfer: the same initrd fetched by the same iPXE over TFTP and over HTTP.

The tree comes from the project's `pxe` verb (boot.ipxe names vmlinuz and initrd.img relative
to its own URL). QEMU's e1000 iPXE ROM boots it (`-boot n` through bootindex=1) once from
QEMU's built-in TFTP server (`-netdev user,tftp=TREE,bootfile=boot.ipxe`) and once from a small
HTTP server on the host's loopback (`bootfile=http://10.0.2.2:PORT/boot.ipxe`); runs alternate.

iPXE prints nothing on the serial console, and slirp's TFTP server lives inside qemu, so the
transfer is timed on the host where both protocols look alike: inotify on the tree reports
when each file is opened and closed by whichever process serves it (slirp opens the file
when the read request arrives and closes it once it has sent the last block; the HTTP server
opens it for the GET and closes it after writing the last byte). The HTTP server also logs
each request's start and end. The boot stops at the kernel's `RAMDISK:` line, whose size
proves the whole initrd arrived; the kernel's first console line's arrival ends the "script
to kernel" span.
"""

from __future__ import annotations

import ctypes
import functools
import http.server
import os
import select
import struct
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import qemu_boot
from bench_common import display_path, log, ratio, save_console

from initrd_composer.errors import ComposeError
from initrd_composer.runner import run

PROTOCOLS = ("tftp", "http")
SCRIPT, KERNEL, INITRD = "boot.ipxe", "vmlinuz", "initrd.img"
MAC = "52:54:00:12:34:56"
BOOT_TIMEOUT = 180.0  # TCG on a busy host: a run takes about 20 s
FIRST_LINE = "] Linux version "
PAGE = 4096

# inotify(7): the events the watch asks for and the fixed part of each record
IN_OPEN, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE = 0x20, 0x08, 0x10
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of NUL-padded name)


@dataclass(frozen=True)
class FileEvent:
    seconds: float  # host monotonic clock
    name: str
    kind: str  # "open" or "close"


@dataclass(frozen=True)
class Request:
    """One HTTP request as the host's server saw it (monotonic seconds)."""

    path: str
    start: float
    end: float
    status: int
    sent_bytes: int


@dataclass(frozen=True)
class PxeRun:
    """One iPXE boot; times in host seconds after qemu was started."""

    protocol: str  # tftp | http
    script_done: float  # boot.ipxe closed by its server
    kernel_start: float
    kernel_end: float
    initrd_start: float  # initrd.img opened by its server...
    initrd_end: float  # ...and closed after the last byte was sent
    first_console: float  # the kernel's first console line arrived
    ramdisk_bytes: int  # the kernel's RAMDISK: line (page-rounded)
    request_seconds: float | None  # HTTP: the server's own log of the initrd GET

    @property
    def initrd_seconds(self) -> float:
        return round(self.initrd_end - self.initrd_start, 3)

    @property
    def kernel_seconds(self) -> float:
        return round(self.kernel_end - self.kernel_start, 3)

    @property
    def script_to_console(self) -> float:
        return round(self.first_console - self.script_done, 3)


@dataclass(frozen=True)
class PxeTimings:
    tree: str
    initrd_bytes: int
    kernel_bytes: int
    netdevs: Mapping[str, str]  # protocol -> the -netdev argument, PORT for the HTTP port
    device: str
    runs: tuple[PxeRun, ...]

    def of(self, protocol: str) -> list[PxeRun]:
        return [r for r in self.runs if r.protocol == protocol]

    def median_of(self, protocol: str, what: str) -> float:
        return float(median(getattr(r, what) for r in self.of(protocol)))

    @property
    def transfer_ratio(self) -> float:
        """Median HTTP initrd transfer / median TFTP initrd transfer."""
        return ratio(self.median_of("http", "initrd_seconds"), self.median_of("tftp", "initrd_seconds"))

    @property
    def console_ratio(self) -> float:
        """Median HTTP script-to-kernel span / the TFTP one."""
        return ratio(self.median_of("http", "script_to_console"), self.median_of("tftp", "script_to_console"))


# ---------------------------------------------------------------- pure parts


def decode_inotify(data: bytes, seconds: float) -> list[FileEvent]:
    """The open/close records of one read() from an inotify descriptor."""
    events, at = [], 0
    while at + _EVENT.size <= len(data):
        _wd, mask, _cookie, length = _EVENT.unpack_from(data, at)
        name = data[at + _EVENT.size : at + _EVENT.size + length].rstrip(b"\0").decode(errors="replace")
        at += _EVENT.size + length
        if mask & IN_OPEN:
            events.append(FileEvent(seconds, name, "open"))
        if mask & (IN_CLOSE_WRITE | IN_CLOSE_NOWRITE):
            events.append(FileEvent(seconds, name, "close"))
    return events


def file_span(events: Sequence[FileEvent], name: str, after: float = 0.0) -> tuple[float, float]:
    """(first open, last close) of `name` at or after `after`; ComposeError if it was never
    opened and closed (its server never sent it)."""
    opens = [e.seconds for e in events if e.name == name and e.kind == "open" and e.seconds >= after]
    closes = [e.seconds for e in events if e.name == name and e.kind == "close" and e.seconds >= after]
    if not opens or not closes or closes[-1] < opens[0]:
        raise ComposeError(f"{name} was not sent (no open and close seen on the tree)",
                           "the iPXE boot did not get that far (scripts/qemu_boot.py shows it)")  # fmt: skip
    return opens[0], closes[-1]


def ramdisk_bytes(lines: Sequence[str]) -> int:
    """The size of the kernel's `RAMDISK: [mem 0xA-0xB]` line: what the loader handed over."""
    for line in lines:
        if "RAMDISK: [mem 0x" in line:
            lo, hi = line.split("[mem ", 1)[1].rstrip("]").split("-")
            return int(hi, 16) - int(lo, 16) + 1
    raise ComposeError("the kernel printed no RAMDISK: line", "the loader passed no initrd")


def parse_pxe_run(
    protocol: str, *, events: Sequence[FileEvent], lines: Sequence[tuple[float, str]],
    requests: Sequence[Request] = (), initrd_bytes: int,
) -> PxeRun:  # fmt: skip
    """A PxeRun from what the host saw, all on one clock whose zero is qemu's start:
    tree file events, timed console lines and (HTTP) the server's request log."""
    script = file_span(events, SCRIPT)
    kernel = file_span(events, KERNEL, script[1])
    initrd = file_span(events, INITRD, kernel[1])
    first = next((t for t, line in lines if FIRST_LINE in line), None)
    if first is None:
        raise ComposeError("the kernel printed no console line", "boot.ipxe must say console=ttyS0")
    size = ramdisk_bytes([line for _t, line in lines])
    if not initrd_bytes <= size < initrd_bytes + PAGE:
        raise ComposeError(f"the kernel got a {size}-byte initrd, not the {initrd_bytes} bytes of {INITRD}",
                           f"the {protocol} transfer was cut short")  # fmt: skip
    request = None
    if protocol == "http":
        gets = [r for r in requests if r.path == f"/{INITRD}" and r.status == 200]
        if not gets or gets[-1].sent_bytes != initrd_bytes:
            raise ComposeError(f"the HTTP server did not send all of /{INITRD}: {gets}", "see its log")
        request = round(gets[-1].end - gets[-1].start, 3)
    return PxeRun(protocol, script[1], *kernel, *initrd, first, size, request)


# ---------------------------------------------------------------- host-side instruments


class FileWatch:
    """inotify on one directory, read by a thread: every open and close of a file in it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.events: list[FileEvent] = []
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self._fd < 0:
            raise ComposeError(f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        mask = IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
        if libc.inotify_add_watch(self._fd, os.fsencode(directory), mask) < 0:
            os.close(self._fd)
            raise ComposeError(f"inotify_add_watch {directory}: {os.strerror(ctypes.get_errno())}")
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._read, name="bench-pxe-inotify", daemon=True)

    def __enter__(self) -> FileWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._fd in ready:
                self._drain()
            if self._stop_r in ready:
                self._drain()
                return

    def _drain(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        self.events += decode_inotify(data, time.monotonic())


class _TreeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the tree; records every request instead of logging it to stderr."""

    server: _TreeServer
    _status = 0

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def do_GET(self) -> None:  # http.server's name
        start = time.monotonic()
        f = self.send_head()
        sent = 0
        if f is not None:
            try:
                self.copyfile(f, self.wfile)
                sent = f.tell()
            finally:
                f.close()
        self.server.requests.append(Request(self.path, start, time.monotonic(), self._status, sent))

    def log_message(self, format: str, *args: object) -> None:  # the base class's names
        pass


class _TreeServer(http.server.ThreadingHTTPServer):
    # Handler threads are joined by server_close(), so `requests` is complete once http_tree()
    # returns: a client may have every byte before its handler has recorded the request.
    # (HTTP/1.0, one request per connection: a client that goes away ends its thread.)
    daemon_threads = False
    block_on_close = True
    requests: list[Request]


@contextmanager
def http_tree(tree: Path) -> Iterator[_TreeServer]:
    """The tree over HTTP on 127.0.0.1, on a port the kernel picks (server.server_port)."""
    server = _TreeServer(("127.0.0.1", 0), functools.partial(_TreeHandler, directory=str(tree)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, name="bench-pxe-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ---------------------------------------------------------------- booting


def write_tree(image: Path, tree: Path) -> Path:
    """The `pxe` verb's tree around our image: probe by default, a 1 s menu."""
    argv = [sys.executable, "-m", "initrd_composer", "pxe", "-o", str(tree), "--initrd", str(image),
            "--default-mode", "probe", "--timeout", "1"]  # fmt: skip
    run(argv, timeout=600)
    return tree


def netdev(protocol: str, tree: Path, port: int | str) -> str:
    if protocol == "tftp":
        return f"user,id=n0,tftp={tree},bootfile={SCRIPT}"
    return f"user,id=n0,bootfile=http://10.0.2.2:{port}/{SCRIPT}"


DEVICE = f"e1000,netdev=n0,mac={MAC},bootindex=1"


def boot_once(protocol: str, tree: Path, initrd_bytes: int, transcript: Path) -> PxeRun:
    """One iPXE boot of the tree over `protocol`, stopped at the kernel's RAMDISK: line."""
    with ExitStack() as stack:
        watch = stack.enter_context(FileWatch(tree))
        server = stack.enter_context(http_tree(tree)) if protocol == "http" else None
        port = server.server_port if server is not None else 0
        lines: list[tuple[float, str]] = []
        start = time.monotonic()
        try:
            result = qemu_boot.boot_firmware(
                ["-netdev", netdev(protocol, tree, port), "-device", DEVICE], timeout=BOOT_TIMEOUT,
                until="RAMDISK: [mem", on_line=lambda line: lines.append((time.monotonic() - start, line)),
            )  # fmt: skip
        except qemu_boot.BootError as exc:
            raise ComposeError(str(exc), "install qemu-system-x86 and ipxe-qemu (scripts/setup)") from exc
        requests = [] if server is None else list(server.requests)
    save_console(transcript, result.lines)
    if result.reason != "matched":
        raise ComposeError(f"iPXE boot over {protocol} ended by {result.reason} after {result.elapsed:.0f} s",
                           f"its console is in {transcript}; iPXE ROMs: ipxe-qemu")  # fmt: skip
    events = [FileEvent(e.seconds - start, e.name, e.kind) for e in watch.events]
    requests = [Request(r.path, r.start - start, r.end - start, r.status, r.sent_bytes) for r in requests]
    return parse_pxe_run(protocol, events=events, lines=lines, requests=requests, initrd_bytes=initrd_bytes)


def measure_pxe(image: Path, out_dir: Path, runs: int) -> PxeTimings:
    """`runs` boots over each protocol, alternated (TFTP first) so host noise hits both."""
    tree = write_tree(image, out_dir / "pxe-tree")
    initrd_bytes, kernel_bytes = (tree / INITRD).stat().st_size, (tree / KERNEL).stat().st_size
    done: list[PxeRun] = []
    for i in range(runs):
        for protocol in PROTOCOLS:
            done.append(
                boot_once(protocol, tree, initrd_bytes, out_dir / "console" / f"pxe-{protocol}-{i + 1}.txt")
            )
            r = done[-1]
            log(f"pxe run {i + 1}, {protocol}: initrd {r.initrd_seconds:.2f} s, "
                f"script to kernel {r.script_to_console:.2f} s")  # fmt: skip
    shown = Path(display_path(tree))
    return PxeTimings(
        tree=str(shown), initrd_bytes=initrd_bytes, kernel_bytes=kernel_bytes,
        netdevs={p: netdev(p, shown, "PORT") for p in PROTOCOLS}, device=DEVICE, runs=tuple(done),
    )  # fmt: skip
