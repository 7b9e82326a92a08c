"""Addressing an interface: the commands /init runs, and their failures reported."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from initrd_composer.boot.commands import CommandResult
from initrd_composer.boot.network.addresses import Addressing, address_argvs, configure, resolv_conf

BB = "/bin/busybox"


def test_static_address_with_gateway_and_mtu() -> None:
    argvs = address_argvs(Addressing("eth0", "192.0.2.15/24", "192.0.2.1", 9000), BB)
    assert argvs == [
        [BB, "ip", "addr", "flush", "dev", "eth0"],
        [BB, "ip", "link", "set", "dev", "eth0", "mtu", "9000"],
        [BB, "ip", "addr", "add", "192.0.2.15/24", "broadcast", "192.0.2.255", "dev", "eth0"],
        [BB, "ip", "link", "set", "dev", "eth0", "up"],
        [BB, "ip", "route", "replace", "default", "via", "192.0.2.1", "dev", "eth0"],
    ]


def test_gateway_off_the_subnet_gets_an_on_link_route_first() -> None:
    argvs = address_argvs(Addressing("eth0", "192.0.2.15/32", "198.51.100.1"), BB)
    assert argvs[-2:] == [
        [BB, "ip", "route", "add", "198.51.100.1", "dev", "eth0"],
        [BB, "ip", "route", "replace", "default", "via", "198.51.100.1", "dev", "eth0"],
    ]
    assert not any("mtu" in a for a in argvs)


def test_resolv_conf_keeps_three_distinct_servers_and_the_search_list() -> None:
    text = resolv_conf(["192.0.2.53", "192.0.2.54", "192.0.2.53", "192.0.2.55", "192.0.2.56"], ["a.test"])
    assert text == "search a.test\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nnameserver 192.0.2.55\n"
    assert resolv_conf([]) == ""


def test_first_failed_command_stops_and_is_named(tmp_path: Path) -> None:
    seen: list[Sequence[str]] = []

    def run(argv: Sequence[str]) -> CommandResult:
        seen.append(argv)
        failing = "add" in argv
        message = "ip: RTNETLINK answers: File exists\n" if failing else ""
        return CommandResult(tuple(argv), 2 if failing else 0, message)

    resolv = tmp_path / "resolv.conf"
    result = configure(Addressing("eth0", "192.0.2.15/24", "192.0.2.1", dns=("192.0.2.53",)),
                       busybox=BB, resolv_path=str(resolv), run=run)
    assert not result.ok
    assert result.error == (
        f"{BB} ip addr add 192.0.2.15/24 broadcast 192.0.2.255 dev eth0: ip: RTNETLINK answers: File exists"
    )
    assert len(seen) == 2 and not resolv.exists()  # nothing after the failure, DNS untouched


def test_unwritable_resolv_conf_is_reported(tmp_path: Path) -> None:
    ok = CommandResult((), 0, "")
    result = configure(Addressing("eth0", "192.0.2.15/24", dns=("192.0.2.53",)), busybox=BB,
                       resolv_path=str(tmp_path / "missing-dir" / "resolv.conf"), run=lambda argv: ok)
    assert not result.ok and "cannot write" in result.error and "resolv.conf" in result.error
