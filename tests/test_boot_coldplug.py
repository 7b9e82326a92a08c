"""Prober on a simulated machine: a fake pyudev context and monitor share a fake clock, and
loading a module (through a fake finit_module) makes devices appear later, as a SCSI HBA
driver does with its host and then, after a bus scan, its disks."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pyudev

from initrd_composer.boot.coldplug import Prober
from initrd_composer.boot.modload import ModuleLoader
from module_db.alias_match import AliasIndex
from module_db.index_files import parse_modules_alias, parse_modules_dep
from module_db.kernel_modules import KernelModules
from module_db.names import name_from_path

DEP = """\
kernel/drivers/scsi/scsi_mod.ko:
kernel/drivers/scsi/mptsas.ko: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/scsi/sr_mod.ko: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/net/e1000.ko:
kernel/drivers/md/dm-mod.ko:
"""
ALIAS = """\
alias pci:v00001000d00000054sv*sd*bc*sc*i* mptsas
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias scsi:t-0x00* sd_mod
alias scsi:t-0x05* sr_mod
"""
HBA = "pci:v00001000d00000054sv00001000sd00008000bc01sc00i00"
NIC = "pci:v00008086d0000100Esv00008086sd0000001Ebc02sc00i00"
UNKNOWN = "pci:v0000DEADd0000BEEFsv00000000sd00000000bc08sc80i00"
DISK = "scsi:t-0x00"


@dataclass
class Dev:
    """What Prober and hwreport read from a pyudev.Device."""

    sys_path: str
    subsystem: str
    properties: dict[str, str] = field(default_factory=dict)
    action: str | None = None
    device_type: str | None = None
    driver: str | None = None


class VanishedProperties(dict[str, str]):
    def get(self, key: str, default: Any = None) -> Any:
        raise OSError(errno.ENOENT, "device vanished")


class World:
    """The clock, the devices present, and the uevents still to come."""

    def __init__(self) -> None:
        self.now = 100.0
        self.present: list[tuple[float, Dev]] = []  # (since, device)
        self.pending: list[tuple[float, Dev]] = []  # (at, uevent), kept sorted
        self.monitor_started = False
        self.polls = 0
        self.on_load: dict[str, list[tuple[float, Dev]]] = {}  # module -> (delay, uevent)
        self.finit_calls: list[str] = []
        self.event_source: Iterator[tuple[float, Dev]] | None = None

    def clock(self) -> float:
        return self.now

    def add_later(self, delay: float, dev: Dev) -> None:
        self.pending.append((self.now + delay, dev))
        self.pending.sort(key=lambda p: p[0])
        if dev.action == "add":
            self.present.append((self.now + delay, Dev(dev.sys_path, dev.subsystem, dev.properties)))

    # -- the fake pyudev.Context -------------------------------------------------------
    def list_devices(self) -> list[Dev]:
        assert self.monitor_started, "the monitor must start before the enumeration"
        return [dev for since, dev in self.present if since <= self.now]

    # -- the fake pyudev.Monitor ---------------------------------------------------------
    def start(self) -> None:
        self.monitor_started = True

    def poll(self, timeout: float) -> Dev | None:
        self.polls += 1
        if self.event_source is not None and not self.pending:
            delay, dev = next(self.event_source)
            self.add_later(delay, dev)
        if self.pending and self.pending[0][0] <= self.now + timeout:
            at, dev = self.pending.pop(0)
            self.now = max(self.now, at)
            return dev
        self.now += timeout
        return None

    # -- the fake finit_module -------------------------------------------------------------
    def finit(self, fd: int) -> None:
        name = name_from_path(os.readlink(f"/proc/self/fd/{fd}"))
        self.finit_calls.append(name)
        self.now += 0.02
        for delay, dev in self.on_load.get(name, []):
            self.add_later(delay, dev)


class CountingAliases(AliasIndex):
    def __init__(self, text: str) -> None:
        super().__init__(parse_modules_alias(text))
        self.queries: list[str] = []

    def match(self, modalias: str) -> tuple[str, ...]:
        self.queries.append(modalias)
        return super().match(modalias)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()
    monkeypatch.setattr(pyudev.Monitor, "from_netlink", staticmethod(lambda context, source=None: w))
    for entry in parse_modules_dep(DEP).values():
        path = tmp_path / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x7fELF")
    w.present.append((0.0, Dev("/sys/devices/pci0000:00/0000:00:05.0", "pci", {"MODALIAS": NIC})))
    return w


def make_prober(
    world: World, tmp_path: Path, **timing: float
) -> tuple[Prober, ModuleLoader, CountingAliases]:
    km = KernelModules(version="6.1.0-test", deps=parse_modules_dep(DEP), aliases=())
    loader = ModuleLoader(km, str(tmp_path), loaded=set(), finit=world.finit)
    aliases = CountingAliases(ALIAS)
    return Prober(loader, aliases, AliasIndex(()), **timing), loader, aliases


def add_hba(world: World, host_scan_s: float, usb: bool = True) -> None:
    """A storage controller whose driver, once loaded, adds host0 and, after the scan, a
    disk; behind USB (usb-storage's delayed scan) unless usb=False."""
    world.present.append((0.0, Dev("/sys/devices/pci0000:00/0000:00:06.0", "pci", {"MODALIAS": HBA})))
    host = "/sys/devices/pci0000:00/0000:00:06.0" + ("/usb1/1-1/1-1:1.0" if usb else "") + "/host0"
    world.on_load["mptsas"] = [
        (0.1, Dev(host, "scsi", {"DEVTYPE": "scsi_host"}, "add", "scsi_host")),
        (0.1, Dev(host + "/scsi_host/host0", "scsi_host", {}, "add")),
        (host_scan_s, Dev(host + "/target0:0:0/0:0:0:0", "scsi", {"MODALIAS": DISK}, "add", "scsi_device")),
    ]


def test_coldplug_loads_what_matches(world: World, tmp_path: Path) -> None:
    world.present += [
        (0.0, Dev("/sys/devices/pci0000:00/0000:00:07.0", "pci", {"MODALIAS": UNKNOWN})),
        (0.0, Dev("/sys/devices/virtual/misc/foo", "misc", {})),
    ]
    prober, loader, _aliases = make_prober(world, tmp_path)
    state = prober.run(world, clock=world.clock)
    assert world.finit_calls == ["e1000"]
    assert state.matches == {NIC: ("e1000",), UNKNOWN: ()}
    assert state.rounds == 2 and state.events == 0
    assert loader.result.loaded == ["e1000"]


def test_the_loop_ends_after_settle_without_events(world: World, tmp_path: Path) -> None:
    prober, _loader, _aliases = make_prober(world, tmp_path, settle_s=0.5)
    start = world.now
    prober.run(world, clock=world.clock)
    # coldplug took one load (0.02 s), then 0.5 s of quiet
    assert world.now == pytest.approx(start + 0.02 + 0.5)
    assert world.polls == 1


def test_a_scsi_disk_found_by_the_host_scan_is_loaded(world: World, tmp_path: Path) -> None:
    add_hba(world, host_scan_s=2.0)
    prober, loader, _aliases = make_prober(world, tmp_path, settle_s=0.5, scan_settle_s=3.0)
    start = world.now
    state = prober.run(world, clock=world.clock)
    assert state.matches[DISK] == ("sd_mod",)
    assert world.finit_calls == ["e1000", "scsi_mod", "mptsas", "sd_mod"]
    assert state.events == 3
    # quiet until 3 s after the host appeared (the disk at +2 s does not extend it further)
    host_added = start + 3 * 0.02 + 0.1  # three loads of 0.02 s, then the host
    assert world.now == pytest.approx(host_added + 3.0)
    assert loader.result.failed == {}


@pytest.mark.parametrize("usb", [True, False])
def test_without_the_scan_settle_the_late_disk_is_missed(world: World, tmp_path: Path, usb: bool) -> None:
    """A disk found 2 s after its host: caught only behind USB with the scan settle on;
    a PCI HBA's late disks are left to the stage that waits for its media."""
    add_hba(world, host_scan_s=2.0, usb=usb)
    prober, _loader, _aliases = make_prober(world, tmp_path, settle_s=0.5, scan_settle_s=0.5 if usb else 3.0)
    state = prober.run(world, clock=world.clock)
    assert DISK not in state.matches
    assert "sd_mod" not in world.finit_calls


@pytest.mark.parametrize(
    ("dev", "expected"),
    [
        (Dev("/p/usb1/1-1/1-1:1.0/h", "scsi_host", {}, "add"), 3.0),
        (Dev("/p/usb1/1-1/1-1:1.0/h", "scsi", {}, "add", "scsi_host"), 3.0),
        (Dev("/p/0000:00:06.0/h", "scsi_host", {}, "add"), 0.5),
        (Dev("/h", "scsi_host", {}, "remove"), 0.5),
        (Dev("/h", "scsi", {}, "add", "scsi_target"), 0.5),
        (Dev("/d", "scsi", {"MODALIAS": DISK}, "add", "scsi_device"), 0.5),
        (Dev("/n", "net", {}, "add"), 0.5),
    ],
)
def test_quiet_time(world: World, tmp_path: Path, dev: Dev, expected: float) -> None:
    prober, _loader, _aliases = make_prober(world, tmp_path, settle_s=0.5, scan_settle_s=3.0)
    assert prober.quiet_time(dev) == expected


def test_the_loop_respects_max_s(world: World, tmp_path: Path) -> None:
    def chatter() -> Iterator[tuple[float, Dev]]:
        n = 0
        while True:
            n += 1
            yield 0.1, Dev(f"/sys/devices/virtual/x/{n}", "x", {}, "change")

    world.event_source = chatter()
    prober, _loader, _aliases = make_prober(world, tmp_path, settle_s=0.5, max_s=2.0)
    start = world.now
    state = prober.run(world, clock=world.clock)
    assert start + 0.02 + 2.0 < world.now <= start + 0.02 + 2.2
    assert 19 <= state.events <= 22


def test_each_modalias_is_matched_and_loaded_once(world: World, tmp_path: Path) -> None:
    second_nic = Dev("/sys/devices/pci0000:00/0000:00:08.0", "pci", {"MODALIAS": NIC})
    world.present.append((0.0, second_nic))
    prober, _loader, aliases = make_prober(world, tmp_path)
    world.add_later(0.1, Dev(second_nic.sys_path, "pci", {"MODALIAS": NIC}, "bind"))
    world.add_later(0.2, Dev("/sys/devices/pci0000:00/0000:00:09.0", "pci", {"MODALIAS": UNKNOWN}, "add"))
    world.add_later(0.3, Dev("/sys/devices/pci0000:00/0000:00:09.0", "pci", {"MODALIAS": UNKNOWN}, "change"))
    state = prober.run(world, clock=world.clock)
    assert sorted(aliases.queries) == sorted([NIC, UNKNOWN])
    assert world.finit_calls == ["e1000"]
    assert state.events == 3


def test_remove_events_load_nothing(world: World, tmp_path: Path) -> None:
    prober, _loader, _aliases = make_prober(world, tmp_path)
    world.pending.append((world.now + 0.1, Dev("/sys/devices/x", "scsi", {"MODALIAS": DISK}, "remove")))
    state = prober.run(world, clock=world.clock)
    assert DISK not in state.matches
    assert state.events == 1


def test_a_vanished_device_does_not_stop_probing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prober, _loader, _aliases = make_prober(world, tmp_path)
    world.pending.append((world.now + 0.1, Dev("/sys/devices/gone", "pci", VanishedProperties(), "add")))
    world.add_later(0.3, Dev("/sys/devices/scsi", "scsi", {"MODALIAS": "scsi:t-0x05"}, "add"))
    state = prober.run(world, clock=world.clock)
    assert state.matches["scsi:t-0x05"] == ("sr_mod",)
    assert "sr_mod" in world.finit_calls
    assert "uevent for /sys/devices/gone" in capsys.readouterr().out


def test_forced_modules_load_first(world: World, tmp_path: Path) -> None:
    add_hba(world, host_scan_s=0.2)
    prober, loader, _aliases = make_prober(world, tmp_path)
    prober.run(world, force=("dm_mod", "e1000"), clock=world.clock)
    assert world.finit_calls[:2] == ["dm_mod", "e1000"]
    assert world.finit_calls.count("e1000") == 1
    assert loader.result.loaded == world.finit_calls


def test_a_device_missed_by_the_loop_is_caught_by_the_last_pass(world: World, tmp_path: Path) -> None:
    """A device present at the end whose uevent never came (lost while loading)."""
    prober, _loader, _aliases = make_prober(world, tmp_path, settle_s=0.5)
    world.present.append((world.now + 0.3, Dev("/sys/devices/late", "scsi", {"MODALIAS": DISK})))
    state = prober.run(world, clock=world.clock)
    assert state.matches[DISK] == ("sd_mod",)
    assert state.events == 0 and state.rounds == 2
