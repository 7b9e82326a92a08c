"""`nfsmount=` / `netfsmount=`: the restore data on an NFS export, mounted read-only.

The kernel's NFS client is given what mount.nfs would give it, because the image has no
mount.nfs: the server's address (`addr=`, resolved here: the kernel does not resolve names;
/etc/resolv.conf is the network stage's), our own address on the way there (`clientaddr=`,
for NFSv4 callbacks) and, for v3, where MOUNT is asked (`mountaddr=`, over TCP; no lock
manager: `nolock`). Versions are tried newest first, 4.2, 4.1, 4.0, then 3, and the one that
worked is reported; a server that refuses a minor version is asked the next one, and a v4
server that says "no such export" is still asked over v3 (a server's v3 paths and v4 pseudo
paths can differ: knfsd with an fsid=0 root).

Waiting: a server that does not answer yet (refused, timed out, no route) is asked again every
POLL_S until ctx.timeout_s; a mount that hangs in the kernel (a server that accepts the
connection but never answers) runs in a forked child that is killed at that deadline, so PID 1
never blocks beyond it. "No such export", "access denied" and other refusals are final.

With `pxe` or `iso_mode` and `prefix=NAME` the share holds `NAME-1.iso` (MondoRescue's PXE
layout): it is loop-mounted read-only (busybox mount -o loop) and the data is its tree.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from initrd_composer.boot import syscalls
from initrd_composer.boot.cmdline import split_nfs_spec
from initrd_composer.boot.commands import BUSYBOX, run_command
from initrd_composer.boot.sources import Choice, Found, MediaContext, SourceError, network_down

NFS_PORT = 2049
VERSIONS = ("4.2", "4.1", "4.0", "3")
POLL_S = 1.0  # between rounds while the server does not answer
PROBE_TIMEOUT_S = 5.0  # one TCP connect to port 2049
LISTING_MAX = 100
MODPROBE = "/sbin/modprobe"
NFS_MODULES = ("nfsv4", "nfsv3")  # each pulls nfs, sunrpc, lockd, ... (modules.dep)
ISO_MODULES = ("loop", "isofs")
MOUNT_FLAGS = syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV

# What a failed mount(2) means, by errno.
_VERSION = frozenset({errno.EPROTONOSUPPORT, errno.EPROTO, 524})  # 524: the kernel's ENOTSUPP
_MISSING = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ESTALE})
_DENIED = frozenset({errno.EACCES, errno.EPERM})
_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
                          errno.EHOSTDOWN, errno.ENETDOWN, errno.ECONNRESET,
                          errno.EADDRNOTAVAIL})  # fmt: skip

HINTS = {
    "bad-spec": "give nfsmount=SERVER:/PATH (or [IPv6]:/PATH)",
    "unresolved": "check the DNS server the network stage wrote to /etc/resolv.conf (nameserver=, "
    "DHCP), or put the server's IP address in nfsmount=",
    "unreachable": "check that the NFS server runs and serves TCP port 2049 (NFSv3 also needs its "
    "rpcbind), and that the network report shows an address on the server's network",
    "export-missing": "check the path in nfsmount= against the server's exports (NFSv4: the pseudo "
    "path) and that the export allows this machine",
    "mount-failed": "see the kernel's messages (dmesg) for why the NFS client refused",
    "not-found": "put PREFIX-1.iso at the top of the share, or boot without iso_mode/pxe to use the "
    "share itself",
}


# -- pure parts ------------------------------------------------------------------------------
def mount_options(version: str, server_ip: str, client_ip: str) -> str:
    """The text options mount(2) takes for one version (the kernel's own parser reads them)."""
    if version.startswith("4"):
        return f"vers={version},addr={server_ip},clientaddr={client_ip}"
    proto = "tcp6" if ":" in server_ip else "tcp"  # the kernel checks it against addr='s family
    return f"nfsvers=3,nolock,addr={server_ip},mountaddr={server_ip},proto={proto},mountproto={proto}"


def fstype_of(version: str) -> str:
    return "nfs4" if version.startswith("4") else "nfs"


def classify(err: int) -> str:
    """version | missing | denied | unreachable | no-fs | failed."""
    if err in _VERSION:
        return "version"
    if err in _MISSING:
        return "missing"
    if err in _DENIED:
        return "denied"
    if err in _UNREACHABLE:
        return "unreachable"
    if err == errno.ENODEV:  # the kernel has no such filesystem type: a module missing
        return "no-fs"
    return "failed"


def iso_name(cfg: Any) -> str | None:
    """`NAME-1.iso` when the command line says the share holds an image (pxe or iso_mode,
    with prefix=NAME); None when the share itself holds the restore data."""
    prefix = getattr(cfg, "prefix", None)
    if prefix and (getattr(cfg, "pxe", False) or getattr(cfg, "iso_mode", False)):
        return f"{prefix}-1.iso"
    return None


@dataclass(frozen=True)
class Attempt:
    version: str
    errno: int  # 0: the mount worked; ETIMEDOUT also when our own deadline stopped it
    text: str

    @property
    def kind(self) -> str:
        return classify(self.errno)

    def describe(self) -> str:
        return f"vers={self.version}: {self.text}"


def verdict(attempts: Sequence[Attempt]) -> tuple[SourceError, bool]:
    """The error a round of failed attempts adds up to, and whether waiting may help."""
    said = "; ".join(a.describe() for a in attempts)
    kinds = {a.kind for a in attempts}
    if kinds & {"missing", "denied"}:
        what = "no such export" if "missing" in kinds else "access denied"
        return SourceError(f"{what} ({said})", HINTS["export-missing"],
                           reason="export-missing"), False  # fmt: skip
    if "unreachable" in kinds:
        return SourceError(f"server not answering ({said})", HINTS["unreachable"],
                           reason="unreachable"), True  # fmt: skip
    hint = HINTS["mount-failed"]
    if "no-fs" in kinds:
        hint = "the kernel has no NFS client: the nfsv4/nfsv3 modules did not load (see the modprobe line)"
    elif kinds == {"version"}:
        hint = "the server speaks none of NFS 4.2, 4.1, 4.0 or 3 over TCP"
    return SourceError(f"mount refused ({said})", hint, reason="mount-failed"), False


def top_listing(path: str, cap: int = LISTING_MAX) -> tuple[list[str], int]:
    """The sorted names at the top of `path` (at most `cap`) and how many there are."""
    names = sorted(os.listdir(path))
    return names[:cap], len(names)


def mount_source(target: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """What is mounted on `target` (the ISO's loop device, the NFS share), from mountinfo."""
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == target and " - " in line:
                    return line.split(" - ", 1)[1].split()[1]
    except OSError:
        pass
    return None


def is_mountpoint(target: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    return mount_source(target, mountinfo) is not None


# -- the system's side, injectable -----------------------------------------------------------
def resolve(server: str) -> str:
    """The server's address (a literal stays as it is); socket.gaierror when it has none."""
    infos = socket.getaddrinfo(server, NFS_PORT, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return str(infos[0][4][0])


def local_address(server_ip: str) -> str:
    """Our address on the route to the server (a UDP connect sends nothing)."""
    family = socket.AF_INET6 if ":" in server_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((server_ip, NFS_PORT))
        return str(sock.getsockname()[0])


def probe(server_ip: str, timeout_s: float) -> None:
    """A TCP connection to port 2049 opens (OSError/TimeoutError when not)."""
    family = socket.AF_INET6 if ":" in server_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((server_ip, NFS_PORT))


def bounded_mount(source: str, target: str, fstype: str, flags: int, data: str, *, timeout_s: float) -> None:
    """mount(2) in a forked child, killed after `timeout_s`: an NFS mount blocks in the kernel
    for as long as the server stays silent, and PID 1 must not. OSError as mount(2) gives it;
    ETIMEDOUT when the deadline stopped it."""
    pid = os.fork()
    if pid == 0:  # the child: nothing but the system call (no Python clean-up, no flushing)
        code = 0
        try:
            syscalls.mount(source, target, fstype, flags, data)
        except OSError as exc:
            code = exc.errno or 255
        except BaseException:
            code = 255
        os._exit(code)
    deadline = time.monotonic() + timeout_s
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)  # NFS waits are killable
            os.waitpid(pid, 0)
            if is_mountpoint(target):  # it got there just before the signal
                return
            raise OSError(errno.ETIMEDOUT, f"no answer within {timeout_s:.1f} s")
        else:
            time.sleep(0.02)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return
    if code < 0 or code == 255:
        raise OSError(errno.EIO, f"the mount helper process failed (status {code})")
    raise OSError(code, os.strerror(code))


def load_modules(names: Sequence[str], timeout_s: float = 30.0) -> str:
    """The image's modprobe for `names` (with their dependencies); "" or what went wrong. A
    module the kernel has built in, or has loaded already, costs nothing."""
    if not os.path.exists(MODPROBE):
        return f"no {MODPROBE} in the image"
    result = run_command([MODPROBE, "-a", *names], timeout_s=timeout_s)
    return "" if result.ok else result.describe()


def loop_mount(image: str, target: str, timeout_s: float) -> None:
    """The ISO at `image` on `target`, read-only, through a loop device busybox sets up (and
    marks autoclear: unmounting frees it)."""
    result = run_command([BUSYBOX, "mount", "-t", "iso9660", "-o", "loop,ro", image, target],
                         timeout_s=timeout_s)  # fmt: skip
    if not result.ok:
        raise OSError(errno.EIO, result.describe())


def _umount(target: str) -> None:
    try:
        syscalls.umount(target)
    except OSError:
        syscalls.umount(target, syscalls.MNT_DETACH)  # busy: detach now, freed when unused


class Mounter(Protocol):
    def __call__(self, source: str, target: str, fstype: str, flags: int, data: str, *,
                 timeout_s: float) -> None: ...  # fmt: skip


@dataclass
class NfsOps:
    """What find() does to the system; tests replace these."""

    resolve: Callable[[str], str] = resolve
    local_address: Callable[[str], str] = local_address
    probe: Callable[[str, float], None] = probe
    mount: Mounter = bounded_mount
    umount: Callable[[str], None] = _umount
    load_modules: Callable[[Sequence[str]], str] = load_modules
    loop_mount: Callable[[str, str, float], None] = loop_mount
    loop_device: Callable[[str], str | None] = mount_source
    loaded: set[str] = field(default_factory=set)  # module groups already asked for


_OPS = NfsOps()


# -- the finder ------------------------------------------------------------------------------
def find(ctx: MediaContext, choice: Choice) -> Found:
    return find_with(ctx, choice, _OPS)


@dataclass(frozen=True)
class _Job:
    ctx: MediaContext
    spec: str
    ops: NfsOps
    deadline: float

    def left(self) -> float:
        return self.deadline - self.ctx.clock()


def find_with(ctx: MediaContext, choice: Choice, ops: NfsOps) -> Found:
    down = network_down(ctx)
    if down is not None:
        raise down
    try:
        server, export = split_nfs_spec(choice.spec)
    except ValueError as exc:
        raise SourceError(f"{choice.word or 'nfsmount='}{choice.spec}: {exc}", HINTS["bad-spec"],
                          reason="bad-spec") from exc  # fmt: skip
    started = ctx.clock()
    modprobe = _load(ctx, ops, NFS_MODULES)
    job = _Job(ctx, choice.spec, ops, ctx.clock() + ctx.timeout_s)  # the wait for the server starts
    seconds = {"modules": round(ctx.clock() - started, 3)}
    nfs_mp = os.path.join(ctx.media_root, "nfs")
    os.makedirs(nfs_mp, exist_ok=True)
    if is_mountpoint(nfs_mp):  # left by an earlier source (netfsmount= then nfsmount=)
        ops.umount(nfs_mp)
    version, options, tried, server_ip = _mount_share(job, server, nfs_mp, modprobe)
    seconds["mount"] = round(job.ctx.clock() - started - seconds["modules"], 3)
    mounts = [nfs_mp]
    data: dict[str, Any] = {"server": server_ip, "export": export, "version": version, "options": options,
                            "tried": tried, "seconds": seconds}  # fmt: skip
    path = nfs_mp
    image = iso_name(ctx.cfg)
    try:
        if image is not None:
            before = ctx.clock()
            path = _mount_iso(job, nfs_mp, image)
            seconds["iso"] = round(ctx.clock() - before, 3)  # its modules included
            mounts.insert(0, path)
            data["iso"] = image
            data["loop"] = ops.loop_device(path)
        names, total = top_listing(path)
    except SourceError:
        _undo(job, mounts)
        raise
    except OSError as exc:
        _undo(job, mounts)
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}", HINTS["mount-failed"],
                          reason="mount-failed") from exc  # fmt: skip
    data["listing"] = names
    data["entries"] = total
    ctx.log(f"nfs: {choice.spec} mounted with NFS {version} on {nfs_mp}"
            + (f", {image} on {path}" if image else ""))  # fmt: skip
    return Found("nfs", choice.spec, path, data, tuple(mounts))


def _load(ctx: MediaContext, ops: NfsOps, names: Sequence[str]) -> str:
    key = ",".join(names)
    if key in ops.loaded:
        return ""
    problem = ops.load_modules(names)
    if problem:
        ctx.log(f"nfs: loading {' '.join(names)}: {problem}")
    else:
        ops.loaded.add(key)  # asked again next time if it failed
    return problem


def _mount_share(job: _Job, server: str, target: str, modprobe: str) -> tuple[str, str, list[str], str]:
    """Rounds of (resolve, probe port 2049, each version) until one mounts, a final answer,
    or the deadline; returns (version, options, earlier attempts, server address)."""
    rounds = 0
    while True:
        rounds += 1
        error, transient, result = _round(job, server, target)
        if result is not None:
            return result
        assert error is not None
        left = job.left()
        if not transient or left <= 0:
            message = error.message
            if rounds > 1:
                message += f"; tried for {job.ctx.timeout_s:g} s"
            if modprobe and error.reason == "mount-failed":
                message += f"; {modprobe}"
            raise SourceError(message, error.hint, reason=error.reason)
        if rounds == 1:
            job.ctx.log(f"nfs: {error.message}; trying again for up to {left:.0f} s")
        job.ctx.sleep(min(POLL_S, left))


def _round(job: _Job, server: str, target: str
           ) -> tuple[SourceError | None, bool, tuple[str, str, list[str], str] | None]:  # fmt: skip
    spec, ops = job.spec, job.ops
    try:
        server_ip = ops.resolve(server)
    except (socket.gaierror, UnicodeError) as exc:
        # EAI_AGAIN: the DNS server did not answer (yet); EAI_NONAME: it says there is no such name
        transient = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN
        return SourceError(f"cannot resolve {server} ({exc})", HINTS["unresolved"],
                           reason="unresolved"), transient, None  # fmt: skip
    try:
        client_ip = ops.local_address(server_ip)
        ops.probe(server_ip, max(0.1, min(PROBE_TIMEOUT_S, job.left())))
    except OSError as exc:
        text = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return SourceError(f"server {server_ip} port {NFS_PORT} not answering ({text})",
                           HINTS["unreachable"], reason="unreachable"), True, None  # fmt: skip
    attempts: list[Attempt] = []
    v4_answered = False  # a v4 server that said something other than "not this minor version"
    for version in VERSIONS:
        if version.startswith("4") and v4_answered:
            continue
        options = mount_options(version, server_ip, client_ip)
        try:
            ops.mount(spec, target, fstype_of(version), MOUNT_FLAGS, options, timeout_s=max(0.1, job.left()))
        except OSError as exc:
            attempt = Attempt(version, exc.errno or errno.EIO, exc.strerror or str(exc))
            attempts.append(attempt)
            if version.startswith("4") and attempt.kind != "version":
                v4_answered = True
            continue
        return None, False, (version, options, [a.describe() for a in attempts], server_ip)
    error, transient = verdict(attempts)
    return error, transient, None


def _mount_iso(job: _Job, share: str, image: str) -> str:
    file = os.path.join(share, image)
    if not os.path.isfile(file):
        try:
            names, total = top_listing(share, 10)
            there = ", ".join(names) + (", ..." if total > len(names) else "") or "nothing"
        except OSError as exc:
            there = f"unreadable: {exc.strerror}"
        raise SourceError(f"no {image} on the share (it holds: {there})", HINTS["not-found"],
                          reason="not-found")  # fmt: skip
    problem = _load(job.ctx, job.ops, ISO_MODULES)
    iso_mp = os.path.join(job.ctx.media_root, "iso")
    os.makedirs(iso_mp, exist_ok=True)
    if is_mountpoint(iso_mp):
        job.ops.umount(iso_mp)
    try:
        job.ops.loop_mount(file, iso_mp, max(5.0, job.left()))
    except OSError as exc:
        extra = f"; {problem}" if problem else ""
        raise SourceError(f"cannot loop-mount {image}: {exc.strerror or exc}{extra}",
                          "is it an ISO 9660 image? (xorriso -indev FILE -toc)",
                          reason="mount-failed") from exc  # fmt: skip
    return iso_mp


def _undo(job: _Job, mounts: Sequence[str]) -> None:
    for target in mounts:  # innermost first
        try:
            job.ops.umount(target)
        except OSError as exc:
            job.ctx.log(f"nfs: cannot unmount {target}: {exc.strerror or exc}")
