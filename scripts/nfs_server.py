#!/usr/bin/env python3
"""An NFS server on the host's loopback for QEMU guests: nfs-ganesha exporting directories.

Used by the NFS boot tests and the benchmark (import it with scripts/ on sys.path, as
qemu_boot), or run by hand:

    scripts/nfs_server.py --export /srv/rescue=/rescue --protocols 3,4

A guest on QEMU's user network reaches the host's loopback as 10.0.2.2 (slirp connects from
127.0.0.1), so ganesha binds 127.0.0.1 only. NFSv4 needs only port 2049; NFSv3 also needs
the portmapper (port 111) for the MOUNT protocol, so with 3 among the protocols a private
`rpcbind` is started first and stopped last (an rpcbind that already answers is used as is).
Only one server can own 2049 at a time: tests that use this share an xdist_group("nfs"), and
users in other processes (a test run and the benchmark) take turns through a lock file held
from start() (or reserve()) to stop(); a server not started by this module is waited for too.

start() returns when the server answers RPC NULL calls (NFS for each version; MOUNT v3
through the portmapper); if ganesha or rpcbind dies, NfsServerError carries its log tail.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

GANESHA = "ganesha.nfsd"
RPCBIND = "rpcbind"
NFS_PROGRAM, MOUNT_PROGRAM, PMAP_PROGRAM = 100003, 100005, 100000
NFS_PORT, PMAP_PORT = 2049, 111
LOG_TAIL_LINES = 25
# Held from start() to stop(): users of this module in other processes (a test run, the
# benchmark) take turns on the port instead of finding each other's server.
LOCK_DIR = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())


class NfsServerError(Exception):
    """The server could not be started, or died; the message carries the log's tail."""


@dataclass(frozen=True)
class Export:
    """One exported directory and the path clients mount (NFSv4 pseudo path; with
    Mount_Path_Pseudo the same path serves v3 MOUNT requests)."""

    path: Path
    pseudo: str
    writable: bool = False  # RW: a capture writes its restore set there


def config_text(exports: Sequence[Export], protocols: Sequence[int], recovery: Path,
                bind: str = "127.0.0.1", port: int = NFS_PORT) -> str:  # fmt: skip
    """ganesha.conf: loopback only, no NLM/RQUOTA/UDP (nothing a guest's nolock mount needs),
    no grace period (a fresh server answers at once), read-only exports (read-write when asked:
    a capture's target) without root squash (the restore reads files owned by anyone)."""
    if not exports:
        raise ValueError("no exports")
    protos = ", ".join(str(p) for p in sorted(set(protocols)))
    if not set(protocols) <= {3, 4}:
        raise ValueError(f"protocols must be 3 and/or 4, not {protos}")
    out = [
        "NFS_CORE_PARAM {",
        f"    Protocols = {protos};",
        f"    Bind_addr = {bind};",
        f"    NFS_Port = {port};",
        "    Enable_NLM = false;",
        "    Enable_RQUOTA = false;",
        "    Enable_UDP = false;",
        "    Mount_Path_Pseudo = true;",
        "}",
        "NFSV4 {",
        "    Graceless = true;",
        f'    RecoveryRoot = "{recovery}";',
        "}",
        "NFS_KRB5 { Active_krb5 = false; }",
    ]
    for n, export in enumerate(exports, 1):
        if not export.pseudo.startswith("/") or '"' in f"{export.path}{export.pseudo}":
            raise ValueError(f"bad export {export}")
        out += [
            "EXPORT {",
            f"    Export_Id = {n};",
            f'    Path = "{export.path}";',
            f'    Pseudo = "{export.pseudo}";',
            f"    Protocols = {protos};",
            "    Transports = TCP;",
            f"    Access_Type = {'RW' if export.writable else 'RO'};",
            "    Squash = No_Root_Squash;",
            "    SecType = sys;",
            "    FSAL { Name = VFS; }",
            "}",
        ]
    return "\n".join(out) + "\n"


# -- ONC RPC over TCP, just enough to ask "are you there?" -----------------------------------
def _rpc_call(host: str, port: int, prog: int, vers: int, proc: int, *, args: bytes = b"",
              timeout: float) -> bytes:  # fmt: skip
    """One call with AUTH_NONE; returns the result bytes of an accepted, successful reply."""
    xid = secrets.randbits(32)
    body = struct.pack(">IIIIIIIIII", xid, 0, 2, prog, vers, proc, 0, 0, 0, 0) + args
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)
        reply = b""
        last = False
        while not last:
            (mark,) = struct.unpack(">I", _recv(sock, 4))
            last = bool(mark & 0x80000000)
            reply += _recv(sock, mark & 0x7FFFFFFF)
    rxid, mtype, stat = struct.unpack(">III", reply[:12])
    if rxid != xid or mtype != 1 or stat != 0:
        raise OSError(f"RPC reply refused (xid ok {rxid == xid}, type {mtype}, reply_stat {stat})")
    _flavor, vlen = struct.unpack(">II", reply[12:20])
    at = 20 + (vlen + 3) // 4 * 4
    (accept,) = struct.unpack(">I", reply[at : at + 4])
    if accept != 0:  # 1 PROG_UNAVAIL, 2 PROG_MISMATCH, 3 PROC_UNAVAIL
        raise OSError(f"RPC program {prog} version {vers} not accepted (accept_stat {accept})")
    return reply[at + 4 :]


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed mid-reply")
        data += chunk
    return data


def rpc_null(host: str, port: int, prog: int, vers: int, timeout: float = 2.0) -> None:
    """Procedure 0 of PROG/VERS at host:port; OSError unless it answers."""
    _rpc_call(host, port, prog, vers, 0, timeout=timeout)


def pmap_getport(host: str, prog: int, vers: int, timeout: float = 2.0) -> int:
    """The TCP port the portmapper (v2 GETPORT) has for PROG/VERS; 0 if none."""
    result = _rpc_call(host, PMAP_PORT, PMAP_PROGRAM, 2, 3, args=struct.pack(">IIII", prog, vers, 6, 0),
                       timeout=timeout)
    return int(struct.unpack(">I", result[:4])[0])


# -- the server ------------------------------------------------------------------------------
class NfsServer:
    """ganesha.nfsd (and rpcbind for v3) in the foreground, files under `workdir`."""

    def __init__(
        self,
        workdir: Path,
        exports: Iterable[Export],
        *,
        protocols: Sequence[int] = (4,),
        bind: str = "127.0.0.1",
        port: int = NFS_PORT,
        start_timeout: float = 30.0,
        port_wait: float = 60.0,
        ganesha: str = GANESHA,
        rpcbind: str = RPCBIND,
    ) -> None:
        self.workdir = Path(workdir)
        self.exports = tuple(exports)
        self.protocols = tuple(sorted(set(protocols)))
        self.bind = bind
        self.port = port
        self.start_timeout = start_timeout
        self.port_wait = port_wait
        self._ganesha_bin = ganesha
        self._rpcbind_bin = rpcbind
        self.conf = self.workdir / "ganesha.conf"
        self.log = self.workdir / "ganesha.log"
        self.rpcbind_log = self.workdir / "rpcbind.log"
        self.pidfile = self.workdir / "ganesha.pid"
        self._ganesha: subprocess.Popen[bytes] | None = None
        self._rpcbind: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None
        self.started_in: float | None = None  # seconds start() took

    def __enter__(self) -> NfsServer:
        return self.start()

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()

    def reserve(self) -> NfsServer:
        """Wait for the port and keep it (the lock) without serving yet: a test that starts
        the server only once a guest has asked must not find someone else's there."""
        if self._lock is None:
            try:
                self._take_port(time.monotonic() + self.port_wait)
            except BaseException:
                self.stop()
                raise
        return self

    def start(self) -> NfsServer:
        for export in self.exports:
            if not export.path.is_dir():
                raise NfsServerError(f"export {export.path}: not a directory")
        self.workdir.mkdir(parents=True, exist_ok=True)
        recovery = self.workdir / "recovery"
        recovery.mkdir(exist_ok=True)
        self.conf.write_text(config_text(self.exports, self.protocols, recovery, self.bind, self.port))
        self.log.write_text("")
        self.reserve()
        began = time.monotonic()
        try:
            if 3 in self.protocols:
                self._start_rpcbind(began + self.start_timeout)
            self._start_ganesha(began + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = round(time.monotonic() - began, 3)
        return self

    def _take_port(self, deadline: float) -> None:
        """The lock, then a free port: another server there would answer our checks while
        ours dies of "address in use"."""
        path = LOCK_DIR / f"initrd-composer-nfs-{self.port}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._lock = fd
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    raise NfsServerError(f"port {self.port}: another nfs_server.py (pid {holder}) kept it "
                                         f"for {self.port_wait:g} s ({path})") from None  # fmt: skip
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        while True:
            with socket.socket(socket.AF_INET6 if ":" in self.bind else socket.AF_INET) as sock:
                sock.settimeout(1.0)
                if sock.connect_ex((self.bind, self.port)) != 0:
                    return
            if time.monotonic() > deadline:
                raise NfsServerError(f"{self.bind}:{self.port} is in use: another NFS server runs there "
                                     "(only one can; tests that start one share xdist_group('nfs'))")
            time.sleep(0.5)

    def _start_rpcbind(self, deadline: float) -> None:
        try:
            pmap_getport(self.bind, PMAP_PROGRAM, 2, timeout=1.0)
            return  # one answers already (the system's): use it, leave it running
        except OSError:
            pass
        # -f: foreground. Not -h 127.0.0.1: rpcbind 1.2.6 aborts ("double free") when a
        # server registers with it so started; the port is reachable on loopback anyway.
        with open(self.rpcbind_log, "wb") as out:
            self._rpcbind = _spawn([self._rpcbind_bin, "-f"], out, "rpcbind")
        self._wait(lambda: pmap_getport(self.bind, PMAP_PROGRAM, 2, timeout=1.0), deadline, "rpcbind")

    def _start_ganesha(self, deadline: float) -> None:
        argv = [self._ganesha_bin, "-F", "-f", str(self.conf), "-L", str(self.log), "-p", str(self.pidfile)]
        with open(self.workdir / "ganesha.out", "wb") as out:
            self._ganesha = _spawn(argv, out, "nfs-ganesha")

        def answers() -> None:
            for vers in self.protocols:
                rpc_null(self.bind, self.port, NFS_PROGRAM, vers, timeout=1.0)
            if 3 in self.protocols:
                mount_port = pmap_getport(self.bind, MOUNT_PROGRAM, 3, timeout=1.0)
                if not mount_port:
                    raise OSError("MOUNT v3 is not registered with the portmapper yet")
                rpc_null(self.bind, mount_port, MOUNT_PROGRAM, 3, timeout=1.0)

        self._wait(answers, deadline, "nfs-ganesha")

    def _wait(self, check: Callable[[], object], deadline: float, what: str) -> None:
        last = ""
        while True:
            for proc, name, log in ((self._rpcbind, "rpcbind", self.rpcbind_log),
                                    (self._ganesha, "nfs-ganesha", self.log)):  # fmt: skip
                if proc is not None and proc.poll() is not None:
                    raise NfsServerError(f"{name} exited with status {proc.returncode} while starting"
                                         f"{self._tail(log)}")  # fmt: skip
            try:
                check()
                return
            except OSError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise NfsServerError(f"{what} did not answer within {self.start_timeout:g} s ({last})"
                                     f"{self._tail(self.log)}")  # fmt: skip
            time.sleep(0.1)

    def check_alive(self) -> None:
        """NfsServerError (with the log tail) if ganesha died since start()."""
        if self._ganesha is not None and self._ganesha.poll() is not None:
            raise NfsServerError(f"nfs-ganesha exited with status {self._ganesha.returncode}"
                                 f"{self._tail(self.log)}")  # fmt: skip

    def stop(self) -> None:
        """SIGTERM (ganesha unregisters from the portmapper), SIGKILL if that takes too long;
        then the port is free for the next user."""
        for attr in ("_ganesha", "_rpcbind"):
            proc: subprocess.Popen[bytes] | None = getattr(self, attr)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            setattr(self, attr, None)
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return self._tail(self.log, lines).lstrip("\n")

    @staticmethod
    def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        # dbus and kerberos complaints are in every log: noise for the reader of an error
        kept = [t for t in text if ":DBUS :" not in t and "krb5" not in t.lower()]
        return ("\n--- " + str(path) + " (tail) ---\n" + "\n".join(kept[-lines:])) if kept else ""


def _spawn(argv: list[str], out: BinaryIO, name: str) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(  # noqa: S603 - argv list, no shell
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it
        )
    except FileNotFoundError as exc:
        package = "nfs-ganesha nfs-ganesha-vfs" if name == "nfs-ganesha" else name
        raise NfsServerError(f"cannot run {argv[0]}: not found (install {package}: scripts/setup)") from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfs_server.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", action="append", required=True, metavar="DIR=/PSEUDO",
                        help="a directory and the path clients mount (repeatable)")
    parser.add_argument("--protocols", default="4", help="3, 4 or 3,4 (default 4)")
    parser.add_argument("--workdir", type=Path, default=None, help="config, logs (default: a temp dir)")
    args = parser.parse_args(argv)
    exports = []
    for spec in args.export:
        path, eq, pseudo = spec.rpartition("=")
        if not eq:
            parser.error(f"--export {spec}: expected DIR=/PSEUDO")
        exports.append(Export(Path(path).resolve(), pseudo))
    protocols = [int(p) for p in args.protocols.split(",") if p]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nfs-server-"))
    # SIGTERM (kill, timeout) stops the servers too: they run in their own session
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(0))
    try:
        with NfsServer(workdir, exports, protocols=protocols) as server:
            print(f"nfs_server: serving {', '.join(e.pseudo for e in exports)} (NFS {args.protocols}) on "
                  f"127.0.0.1:{server.port} after {server.started_in} s; log {server.log}; Ctrl-C stops",
                  flush=True)  # fmt: skip
            while True:
                server.check_alive()
                time.sleep(1)
    except NfsServerError as exc:
        print(f"nfs_server: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
