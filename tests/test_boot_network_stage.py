"""The network stage's execution, on a fake /sys with a recording command runner: what it
runs, in which order, and that a failed step is reported while the next is tried."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from initrd_composer.boot.cmdline import parse_cmdline
from initrd_composer.boot.commands import CommandResult
from initrd_composer.boot.network.plan import CreateBond, CreateVlan
from initrd_composer.boot.network.stage import (
    StageOptions,
    _bond_argvs,
    _bond_options,
    _vlan_argv,
    run_network,
    wait_for_carrier,
)
from tests.fake_clock import FakeClock
from tests.test_boot_network_plan import _netdev

BB = "/bin/busybox"



class Runner:
    def __init__(self, fail: str = "") -> None:
        self.argvs: list[tuple[str, ...]] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.argvs.append(tuple(argv))
        bad = bool(self.fail) and self.fail in " ".join(argv)
        message = "ip: RTNETLINK answers: No such device\n" if bad else ""
        return CommandResult(tuple(argv), 1 if bad else 0, message)


def _opts(tmp_path: Path, runner: Runner, clock: FakeClock) -> StageOptions:
    return StageOptions(sys_root=str(tmp_path), busybox=BB, run=runner, clock=clock, sleep=clock.sleep,
                        resolv_path=str(tmp_path / "resolv.conf"), carrier_wait_s=5.0)


def test_bond_commands_and_options_mode_first(tmp_path: Path) -> None:
    step = CreateBond("bond0", ("eth0", "eth1"), (("miimon", "100"), ("mode", "active-backup")))
    assert _bond_argvs(step, BB) == [
        [BB, "ip", "link", "add", "name", "bond0", "type", "bond"],
        [BB, "ip", "link", "set", "dev", "eth0", "down"],
        [BB, "ip", "link", "set", "dev", "eth1", "down"],
        [BB, "ip", "link", "set", "dev", "eth0", "master", "bond0"],
        [BB, "ip", "link", "set", "dev", "eth1", "master", "bond0"],
        [BB, "ip", "link", "set", "dev", "eth0", "up"],
        [BB, "ip", "link", "set", "dev", "eth1", "up"],
    ]
    assert _bond_options(step, "/sys") == [
        ("/sys/class/net/bond0/bonding/mode", "active-backup"),
        ("/sys/class/net/bond0/bonding/miimon", "100"),
    ]
    assert _vlan_argv(CreateVlan("bond0.5", "bond0", 5), BB) == [
        BB, "ip", "link", "add", "link", "bond0", "name", "bond0.5", "type", "vlan", "id", "5",
    ]


def test_carrier_wait_is_bounded_and_ends_early_once_all_have_one(tmp_path: Path) -> None:
    _netdev(tmp_path, "eth0", "52:54:00:00:00:01", carrier="0")
    clock, runner = FakeClock(), Runner()
    found = wait_for_carrier(_opts(tmp_path, runner, clock))
    assert [i.carrier for i in found] == [False]
    assert 5.0 <= clock.now < 5.2  # the bound, not forever
    assert runner.argvs == [(BB, "ip", "link", "set", "dev", "eth0", "up")]
    (tmp_path / "class/net/eth0/carrier").write_text("1\n")
    clock.now = 0.0
    wait_for_carrier(_opts(tmp_path, Runner(), clock))
    assert clock.now == 0.0


def test_static_address_is_configured_and_reported(tmp_path: Path) -> None:
    _netdev(tmp_path, "eth0", "52:54:00:00:00:01")
    clock, runner = FakeClock(), Runner()
    cfg = parse_cmdline("ipconf=eth0:192.0.2.15:255.255.255.0:192.0.2.255:192.0.2.1 nameserver=192.0.2.53")
    section = run_network(cfg, _opts(tmp_path, runner, clock))
    assert section["ok"] and section["errors"] == []
    (iface,) = section["interfaces"]
    assert (iface["interface"], iface["mac"], iface["method"], iface["address"], iface["gateway"]) == (
        "eth0", "52:54:00:00:00:01", "static", "192.0.2.15/24", "192.0.2.1"
    )
    added = (BB, "ip", "addr", "add", "192.0.2.15/24", "broadcast", "192.0.2.255", "dev", "eth0")
    assert added in runner.argvs
    assert (tmp_path / "resolv.conf").read_text() == "nameserver 192.0.2.53\n"


def test_a_failed_step_is_reported_and_the_next_is_tried(tmp_path: Path) -> None:
    _netdev(tmp_path, "eth0", "52:54:00:00:00:01")
    _netdev(tmp_path, "eth1", "52:54:00:00:00:02")
    clock, runner = FakeClock(), Runner(fail="dev eth0")
    cfg = parse_cmdline(
        "ip=192.0.2.15::192.0.2.1:255.255.255.0::eth0:off ip=192.0.2.16:::255.255.255.0::eth1:none"
    )
    section = run_network(cfg, _opts(tmp_path, runner, clock))
    assert section["ok"]
    assert [i["interface"] for i in section["interfaces"]] == ["eth1"]
    # eth0's link-up and its address both failed, each reported; eth1 went on
    assert [e.split(": ", 1)[0] for e in section["errors"]] == ["link eth0", "eth0"]
    assert all(e.endswith("RTNETLINK answers: No such device") for e in section["errors"])
