"""The NFS source's pure parts and its decisions, with the system calls replaced (no root,
no server): mount options per version, what an errno means, when it waits and when it gives
up, the ISO on the share, and that nothing stays mounted after a failure. The real mounts
are proven by tests/test_boot_nfs.py; bounded_mount's fork-and-kill is tested here for real.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot import syscalls
from initrd_composer.boot.cmdline import parse_cmdline
from initrd_composer.boot.sources import Choice, MediaContext, SourceError, nfs
from initrd_composer.boot.sources.nfs import (
    MOUNT_FLAGS,
    POLL_S,
    Attempt,
    NfsOps,
    bounded_mount,
    classify,
    find_with,
    iso_name,
    mount_options,
    mount_source,
    top_listing,
    verdict,
)
from tests.fake_clock import FakeClock

SPEC = "10.0.2.2:/rescue"
NETWORK_UP = {"interfaces": [{"interface": "eth0", "address": "10.0.2.15/24"}], "errors": [], "problems": []}



class World:
    """A fake server and kernel: mount outcomes per version, files the share and ISO hold."""

    def __init__(self, clock: FakeClock, outcomes: dict[str, int] | None = None, *,
                 share: Sequence[str] = ("MARKER",),
                 iso: Sequence[str] = ("README", "data")) -> None:  # fmt: skip
        self.clock = clock
        self.outcomes = outcomes or {}  # version -> errno (0 or absent: it mounts)
        self.share = share
        self.iso = iso
        self.mounted: list[str] = []
        self.calls: list[tuple[str, ...]] = []
        self.probe_errors: list[OSError] = []  # raised by the next probes, in order
        self.resolve_error: OSError | None = None
        self.modprobe_problem = ""
        self.loop_error: OSError | None = None

    def ops(self) -> NfsOps:
        return NfsOps(resolve=self.resolve, local_address=lambda ip: "10.0.2.15", probe=self.probe,
                      mount=self.mount, umount=self.umount, load_modules=self.load,
                      loop_mount=self.loop_mount, loop_device=lambda target: "/dev/loop0")  # fmt: skip

    def resolve(self, server: str) -> str:
        self.calls.append(("resolve", server))
        if self.resolve_error is not None:
            raise self.resolve_error
        return "10.0.2.2" if server == "nfs.example" else server

    def probe(self, ip: str, timeout_s: float) -> None:
        self.calls.append(("probe", ip))
        assert 0 < timeout_s <= nfs.PROBE_TIMEOUT_S
        if self.probe_errors:
            raise self.probe_errors.pop(0)

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str, *,
              timeout_s: float) -> None:  # fmt: skip
        version = data.split(",", maxsplit=1)[0].split("=")[1]
        self.calls.append(("mount", version, fstype, source, data))
        assert flags == MOUNT_FLAGS and flags & syscalls.MS_RDONLY
        assert timeout_s > 0
        err = self.outcomes.get(version, 0)
        if err == errno.ETIMEDOUT:
            self.clock.now += timeout_s  # a silent server: the whole wait is spent
        if err:
            raise OSError(err, os.strerror(err))
        for name in self.share:
            Path(target, name).write_text(name)
        self.mounted.append(target)

    def umount(self, target: str) -> None:
        self.calls.append(("umount", target))
        self.mounted.remove(target)
        for name in os.listdir(target):
            os.unlink(os.path.join(target, name))

    def load(self, names: Sequence[str]) -> str:
        self.calls.append(("modprobe", *names))
        return self.modprobe_problem

    def loop_mount(self, image: str, target: str, timeout_s: float) -> None:
        self.calls.append(("loop", image, target))
        assert os.path.isfile(image)
        if self.loop_error is not None:
            raise self.loop_error
        for name in self.iso:
            Path(target, name).mkdir() if name == "data" else Path(target, name).write_text(name)
        self.mounted.append(target)

    def mounts_tried(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "mount"]


def _ctx(tmp_path: Path, clock: FakeClock, cmdline: str = f"nfsmount={SPEC}", *, timeout: float = 30.0,
         network: dict[str, Any] | None = NETWORK_UP) -> MediaContext:  # fmt: skip
    return MediaContext(cfg=parse_cmdline(cmdline), timeout_s=timeout, media_root=str(tmp_path / "media"),
                        log=lambda _: None, sleep=clock.sleep, clock=clock, network=network)  # fmt: skip


def _find(tmp_path: Path, world: World, cmdline: str = f"nfsmount={SPEC}", spec: str = SPEC,
          **kw: Any) -> Any:  # fmt: skip
    ctx = _ctx(tmp_path, world.clock, cmdline, **kw)
    return find_with(ctx, Choice("nfs", spec, "nfsmount="), world.ops())


# -- pure parts ------------------------------------------------------------------------------
def test_mount_options_per_version() -> None:
    assert mount_options("4.2", "10.0.2.2", "10.0.2.15") == "vers=4.2,addr=10.0.2.2,clientaddr=10.0.2.15"
    assert mount_options("4.0", "10.0.2.2", "10.0.2.15") == "vers=4.0,addr=10.0.2.2,clientaddr=10.0.2.15"
    assert mount_options("3", "10.0.2.2", "10.0.2.15") == (
        "nfsvers=3,nolock,addr=10.0.2.2,mountaddr=10.0.2.2,proto=tcp,mountproto=tcp"
    )
    # the kernel refuses proto=tcp with an IPv6 addr=
    assert mount_options("3", "fd00::2", "fd00::15").endswith("proto=tcp6,mountproto=tcp6")
    assert mount_options("4.1", "fd00::2", "fd00::15") == "vers=4.1,addr=fd00::2,clientaddr=fd00::15"
    assert (nfs.fstype_of("4.1"), nfs.fstype_of("3")) == ("nfs4", "nfs")


@pytest.mark.parametrize(("err", "kind"), [
    (errno.EPROTONOSUPPORT, "version"), (errno.ENOENT, "missing"), (errno.EACCES, "denied"),
    (errno.EPERM, "denied"), (errno.ECONNREFUSED, "unreachable"), (errno.ETIMEDOUT, "unreachable"),
    (errno.EHOSTUNREACH, "unreachable"), (errno.ENODEV, "no-fs"), (errno.EINVAL, "failed"),
])  # fmt: skip
def test_errno_meaning(err: int, kind: str) -> None:
    assert classify(err) == kind


def test_verdicts() -> None:
    def attempts(*errs: tuple[str, int]) -> list[Attempt]:
        return [Attempt(v, e, os.strerror(e)) for v, e in errs]

    # a v4 "no such export" outweighs v3's missing rpcbind: the server answered
    error, transient = verdict(attempts(("4.2", errno.ENOENT), ("3", errno.ECONNREFUSED)))
    assert (error.reason, transient) == ("export-missing", False)
    assert "vers=4.2: No such file or directory" in error.message and "vers=3" in error.message
    error, transient = verdict(attempts(("4.2", errno.EACCES)))
    assert (error.reason, transient) == ("export-missing", False) and "access denied" in error.message
    error, transient = verdict(attempts(("4.2", errno.ECONNREFUSED), ("3", errno.ETIMEDOUT)))
    assert (error.reason, transient) == ("unreachable", True)
    error, transient = verdict(attempts(*[(v, errno.EPROTONOSUPPORT) for v in nfs.VERSIONS]))
    assert (error.reason, transient) == ("mount-failed", False) and "none of NFS" in error.hint
    error, _ = verdict(attempts(("4.2", errno.ENODEV), ("3", errno.ENODEV)))
    assert error.reason == "mount-failed" and "modules" in error.hint


@pytest.mark.parametrize(("cmdline", "name"), [
    ("pxe prefix=rescue", "rescue-1.iso"), ("iso_mode prefix=host1", "host1-1.iso"),
    ("prefix=rescue", None), ("pxe", None), ("iso_mode", None), ("", None),
])  # fmt: skip
def test_iso_name(cmdline: str, name: str | None) -> None:
    assert iso_name(parse_cmdline(cmdline)) == name


def test_listing_is_sorted_and_capped(tmp_path: Path) -> None:
    for n in (3, 1, 2, 10):
        (tmp_path / f"f{n}").write_text("")
    assert top_listing(str(tmp_path)) == (["f1", "f10", "f2", "f3"], 4)
    assert top_listing(str(tmp_path), cap=2) == (["f1", "f10"], 4)


def test_mount_source_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 25 0:40 / /run/initrd-composer/media/nfs ro,nosuid,nodev - nfs4 10.0.2.2:/rescue ro,vers=4.2\n"
        "31 30 7:0 / /run/initrd-composer/media/iso ro,relatime - iso9660 /dev/loop0 ro\n"
    )
    assert mount_source("/run/initrd-composer/media/iso", str(info)) == "/dev/loop0"
    assert mount_source("/run/initrd-composer/media/nfs", str(info)) == "10.0.2.2:/rescue"
    assert mount_source("/run/initrd-composer/media/usb0", str(info)) is None
    assert mount_source("/x", str(tmp_path / "absent")) is None


# -- the finder's decisions ------------------------------------------------------------------
def test_v4_first_and_what_the_report_says(tmp_path: Path) -> None:
    world = World(FakeClock(100.0))
    found = _find(tmp_path, world)
    mp = str(tmp_path / "media" / "nfs")
    assert (found.kind, found.source, found.path, found.mounts) == ("nfs", SPEC, mp, (mp,))
    assert found.data == {"server": "10.0.2.2", "export": "/rescue", "version": "4.2",
                          "options": "vers=4.2,addr=10.0.2.2,clientaddr=10.0.2.15", "tried": [],
                          "listing": ["MARKER"], "entries": 1,
                          "seconds": {"modules": 0.0, "mount": 0.0}}  # fmt: skip
    # modules first, the name resolved and port 2049 probed before the kernel is asked
    assert [c[0] for c in world.calls] == ["modprobe", "resolve", "probe", "mount"]
    assert world.calls[0] == ("modprobe", "nfsv4", "nfsv3")
    assert world.calls[3][1:4] == ("4.2", "nfs4", SPEC)


def test_a_name_is_resolved_for_the_kernel(tmp_path: Path) -> None:
    world = World(FakeClock(100.0))
    found = _find(tmp_path, world, "nfsmount=nfs.example:/rescue", "nfs.example:/rescue")
    mount = next(c for c in world.calls if c[0] == "mount")
    assert mount[3] == "nfs.example:/rescue" and "addr=10.0.2.2" in mount[4]
    assert found.data["server"] == "10.0.2.2"


def test_minor_versions_then_v3(tmp_path: Path) -> None:
    world = World(FakeClock(100.0), {v: errno.EPROTONOSUPPORT for v in ("4.2", "4.1", "4.0")})
    found = _find(tmp_path, world)
    assert world.mounts_tried() == ["4.2", "4.1", "4.0", "3"]
    assert found.data["version"] == "3"
    assert found.data["options"].startswith("nfsvers=3,nolock,")
    assert found.data["tried"] == [f"vers={v}: Protocol not supported" for v in ("4.2", "4.1", "4.0")]
    assert next(c for c in world.calls if c[0] == "mount" and c[1] == "3")[2] == "nfs"


def test_missing_export_asks_v3_once_and_gives_up(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    world = World(clock, {"4.2": errno.ENOENT, "3": errno.EACCES})
    with pytest.raises(SourceError) as info:
        _find(tmp_path, world)
    assert info.value.reason == "export-missing"
    assert world.mounts_tried() == ["4.2", "3"]  # 4.1/4.0 skipped: the v4 server answered
    assert clock.slept == [] and world.mounted == []


def test_a_server_that_comes_up_late_is_waited_for(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    world = World(clock)
    world.probe_errors = [ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")] * 3
    found = _find(tmp_path, world)
    assert found.data["version"] == "4.2"
    assert clock.slept == [POLL_S] * 3
    assert [c[0] for c in world.calls].count("probe") == 4
    assert found.data["seconds"] == {"modules": 0.0, "mount": 3 * POLL_S}  # the wait is the mount's


def test_a_server_that_never_answers_costs_the_timeout_and_no_more(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    world = World(clock)
    world.probe_errors = [TimeoutError("timed out")] * 1000
    with pytest.raises(SourceError) as info:
        _find(tmp_path, world, timeout=7)
    assert info.value.reason == "unreachable"
    assert "port 2049 not answering (timed out)" in info.value.message
    assert "tried for 7 s" in info.value.message
    assert sum(clock.slept) == pytest.approx(7.0) and clock.now == pytest.approx(107.0)
    assert world.mounts_tried() == []


def test_a_mount_that_hangs_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    world = World(clock, {"4.2": errno.ETIMEDOUT, "3": errno.ETIMEDOUT})
    with pytest.raises(SourceError) as info:
        _find(tmp_path, world, timeout=10)
    assert info.value.reason == "unreachable"
    assert clock.now == pytest.approx(110.0, abs=0.2)  # 4.2 used it all; 3 got the 0.1 s minimum


@pytest.mark.parametrize(("err", "waits"), [(socket.EAI_NONAME, False), (socket.EAI_AGAIN, True)])
def test_unresolved_names(tmp_path: Path, err: int, waits: bool) -> None:
    clock = FakeClock(100.0)
    world = World(clock)
    world.resolve_error = socket.gaierror(err, "Name or service not known")
    with pytest.raises(SourceError) as info:
        _find(tmp_path, world, "nfsmount=nfs.example:/rescue", "nfs.example:/rescue", timeout=5)
    assert info.value.reason == "unresolved" and "nfs.example" in info.value.message
    assert bool(clock.slept) is waits and world.mounts_tried() == []


def test_no_network_means_no_attempt(tmp_path: Path) -> None:
    world = World(FakeClock(100.0))
    down = {"interfaces": [], "errors": ["eth0: no carrier"], "problems": []}
    with pytest.raises(SourceError) as info:
        _find(tmp_path, world, network=down)
    assert info.value.reason == "no-network" and "no carrier" in info.value.message
    assert world.calls == []


def test_bad_spec(tmp_path: Path) -> None:
    world = World(FakeClock(100.0))
    with pytest.raises(SourceError) as info:
        _find(tmp_path, world, spec="server-without-path")
    assert info.value.reason == "bad-spec" and world.calls == []


def test_modules_missing_say_so(tmp_path: Path) -> None:
    world = World(FakeClock(100.0), {v: errno.ENODEV for v in nfs.VERSIONS})
    world.modprobe_problem = "modprobe: module nfsv4 not found"
    with pytest.raises(SourceError) as info:
        _find(tmp_path, world)
    assert info.value.reason == "mount-failed" and "module nfsv4 not found" in info.value.message


def test_modules_are_asked_for_once(tmp_path: Path) -> None:
    world = World(FakeClock(100.0))
    ops = world.ops()
    ctx = _ctx(tmp_path, world.clock)
    find_with(ctx, Choice("nfs", SPEC), ops)
    world.umount(str(tmp_path / "media" / "nfs"))
    find_with(ctx, Choice("nfs", SPEC), ops)
    assert [c for c in world.calls if c[0] == "modprobe"] == [("modprobe", "nfsv4", "nfsv3")]


# -- the ISO on the share --------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["pxe", "iso_mode"])
def test_the_iso_on_the_share_is_the_data(tmp_path: Path, flag: str) -> None:
    world = World(FakeClock(100.0), share=("MARKER", "rescue-1.iso"))
    found = _find(tmp_path, world, f"{flag} prefix=rescue nfsmount={SPEC}")
    nfs_mp, iso_mp = str(tmp_path / "media" / "nfs"), str(tmp_path / "media" / "iso")
    assert (found.path, found.mounts) == (iso_mp, (iso_mp, nfs_mp))
    assert (found.data["iso"], found.data["loop"], found.data["listing"]) == (
        "rescue-1.iso", "/dev/loop0", ["README", "data"]
    )
    assert ("loop", os.path.join(nfs_mp, "rescue-1.iso"), iso_mp) in world.calls
    assert ("modprobe", "loop", "isofs") in world.calls


def test_without_prefix_the_share_is_the_data(tmp_path: Path) -> None:
    world = World(FakeClock(100.0), share=("MARKER", "rescue-1.iso"))
    found = _find(tmp_path, world, f"pxe nfsmount={SPEC}")
    assert found.path == str(tmp_path / "media" / "nfs") and "iso" not in found.data
    assert found.data["listing"] == ["MARKER", "rescue-1.iso"]


def test_a_missing_iso_unmounts_the_share(tmp_path: Path) -> None:
    world = World(FakeClock(100.0), share=("MARKER", "other-1.iso"))
    with pytest.raises(SourceError) as info:
        _find(tmp_path, world, f"iso_mode prefix=rescue nfsmount={SPEC}")
    assert info.value.reason == "not-found"
    assert "no rescue-1.iso on the share (it holds: MARKER, other-1.iso)" in info.value.message
    assert world.mounted == [] and ("umount", str(tmp_path / "media" / "nfs")) in world.calls


def test_a_bad_iso_unmounts_the_share(tmp_path: Path) -> None:
    world = World(FakeClock(100.0), share=("rescue-1.iso",))
    world.loop_error = OSError(errno.EIO, "mount: mounting /dev/loop0 failed: Invalid argument")
    with pytest.raises(SourceError) as info:
        _find(tmp_path, world, f"pxe prefix=rescue nfsmount={SPEC}")
    assert info.value.reason == "mount-failed" and "cannot loop-mount rescue-1.iso" in info.value.message
    assert world.mounted == []


# -- bounded_mount, for real (the child's errno, the kill at the deadline) -------------------
def test_bounded_mount_reports_the_childs_errno(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        bounded_mount("none", str(tmp_path / "absent"), "tmpfs", 0, "", timeout_s=10)
    assert info.value.errno in (errno.ENOENT, errno.EPERM)  # root: no such mount point; else: not allowed


def test_bounded_mount_kills_a_mount_that_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the forked child inherits the patched module: its "mount" sleeps like a silent server
    monkeypatch.setattr(syscalls, "mount", lambda *a: time.sleep(30))
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        bounded_mount("10.0.2.2:/rescue", str(tmp_path), "nfs4", 0, "", timeout_s=0.5)
    assert info.value.errno == errno.ETIMEDOUT and "no answer within 0.5 s" in str(info.value)
    assert time.monotonic() - started < 5


def test_bounded_mount_success_is_the_childs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscalls, "mount", lambda *a: None)
    bounded_mount("10.0.2.2:/rescue", str(tmp_path), "nfs4", 0, "", timeout_s=5)
