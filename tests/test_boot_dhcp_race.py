"""The DHCP race for real: busybox's udhcpc on two interfaces at once, dnsmasq answering on
one of them, all inside network namespaces this test makes (test hosts of its own, on the
192.0.2.0/24 documentation range; nothing leaves the machine).

Only the race is tested here; the address is configured by the caller, so the test also
checks that no interface got one from the clients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from initrd_composer.boot.network.dhcp import Lease, parse_lease, udhcpc_argv

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "skeleton" / "rootfs" / "usr" / "lib" / "initrd-composer" / "udhcpc.script"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)  # noqa: S603 - test only


@dataclass(frozen=True)
class Net:
    client: str  # namespace holding c0 (served) and c1 (carrier, no server)
    server: str


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    tag = f"{os.getpid() % 10000}"
    client, server, dead = f"icc{tag}", f"ics{tag}", f"icd{tag}"
    for ns in (client, server, dead):
        _ip("netns", "add", ns)
    dnsmasq: subprocess.Popen[bytes] | None = None
    try:
        _ip("link", "add", "c0", "netns", client, "type", "veth", "peer", "name", "s0", "netns", server)
        _ip("link", "add", "c1", "netns", client, "type", "veth", "peer", "name", "d1", "netns", dead)
        _ip("-n", server, "addr", "add", "192.0.2.1/24", "dev", "s0")
        for ns, dev in ((server, "s0"), (dead, "d1"), (client, "lo"), (server, "lo")):
            _ip("-n", ns, "link", "set", dev, "up")
        dnsmasq = subprocess.Popen(  # noqa: S603 - test only
            ["ip", "netns", "exec", server, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
             "--port=0", "--interface=s0", "--bind-interfaces", "--no-ping",
             "--dhcp-range=192.0.2.50,192.0.2.60,255.255.255.0,1h",
             "--dhcp-option=option:router,192.0.2.1", "--dhcp-option=option:dns-server,192.0.2.53",
             "--dhcp-option=option:mtu,1400", "--dhcp-option=option:domain-name,rescue.test",
             f"--dhcp-leasefile={tmp_path / 'leases'}", f"--pid-file={tmp_path / 'dnsmasq.pid'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        yield Net(client, server)
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
        for ns in (client, server, dead):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)  # noqa: S603


def _race(
    net: Net, tmp_path: Path, interfaces: list[str], timeout_s: float, configure_winner: bool = False
) -> dict[str, object]:
    """dhcp_race run inside the client namespace (a child, so setns stays out of pytest)."""
    code = (
        "import dataclasses, json, sys\n"
        f"configure_winner = {configure_winner!r}\n"
        "from initrd_composer.boot.network.dhcp import dhcp_race\n"
        f"r = dhcp_race({interfaces!r}, timeout_s={timeout_s}, lease_dir={str(tmp_path / 'leases.d')!r},"
        f" busybox='/bin/busybox', script={str(SCRIPT)!r}, discover_tries=3, pause_s=1)\n"
        "out = dataclasses.asdict(r)\n"
        "if configure_winner and r.lease:\n"
        "    from initrd_composer.boot.network.addresses import configure, from_lease\n"
        f"    out['configured'] = dataclasses.asdict(configure(from_lease(r.lease), busybox='/bin/busybox',"
        f" resolv_path={str(tmp_path / 'resolv.conf')!r}))\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(  # noqa: S603 - test only
        ["ip", "netns", "exec", net.client, sys.executable, "-c", code],
        capture_output=True, text=True, timeout=timeout_s + 30, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _addresses(ns: str, dev: str) -> list[str]:
    out = subprocess.run(  # noqa: S603 - test only
        ["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", dev], capture_output=True, text=True, check=True
    ).stdout
    return [a["local"] for entry in json.loads(out) for a in entry.get("addr_info", [])]


def _udhcpc_left(ns: str) -> list[str]:
    pids = subprocess.run(  # noqa: S603 - test only
        ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
    ).stdout.split()
    return [p for p in pids if b"udhcpc" in Path(f"/proc/{p}/cmdline").read_bytes()]


@pytest.mark.root
def test_first_lease_wins_and_no_client_is_left(net: Net, tmp_path: Path) -> None:
    started = time.monotonic()
    result = _race(net, tmp_path, ["c1", "c0"], timeout_s=20)
    lease = result["lease"]
    assert isinstance(lease, dict), result
    assert lease["interface"] == "c0"
    assert lease["address"].startswith("192.0.2.") and 50 <= int(lease["address"].rsplit(".", 1)[1]) <= 60
    assert (lease["prefixlen"], lease["router"], lease["dns"]) == (24, "192.0.2.1", ["192.0.2.53"])
    assert (lease["mtu"], lease["domain"], lease["server"]) == (1400, "rescue.test", "192.0.2.1")
    assert result["tried"] == ["c1", "c0"]
    assert time.monotonic() - started < 20
    # the race configures nothing: the caller gives the winner its address
    assert _addresses(net.client, "c0") == [] and _addresses(net.client, "c1") == []
    assert _udhcpc_left(net.client) == []


@pytest.mark.root
def test_no_server_ends_without_a_lease_in_bounded_time(net: Net, tmp_path: Path) -> None:
    started = time.monotonic()
    result = _race(net, tmp_path, ["c1"], timeout_s=15)
    assert result["lease"] is None
    failed = dict(result["failed"])  # type: ignore[call-overload]
    assert list(failed) == ["c1"]
    assert time.monotonic() - started < 15 + 10
    assert _udhcpc_left(net.client) == []


@pytest.mark.root
def test_the_winner_gets_address_route_and_dns(net: Net, tmp_path: Path) -> None:
    result = _race(net, tmp_path, ["c0", "c1"], timeout_s=20, configure_winner=True)
    lease = result["lease"]
    assert isinstance(lease, dict) and lease["interface"] == "c0", result
    assert result["configured"] == {"ok": True, "error": ""}
    assert _addresses(net.client, "c0") == [lease["address"]] and _addresses(net.client, "c1") == []
    route = subprocess.run(  # noqa: S603 - test only
        ["ip", "-n", net.client, "-4", "route", "show", "default"], capture_output=True, text=True, check=True
    ).stdout
    assert route.split()[:5] == ["default", "via", "192.0.2.1", "dev", "c0"]
    mtu = subprocess.run(  # noqa: S603 - test only
        ["ip", "-n", net.client, "-j", "link", "show", "c0"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(mtu)[0]["mtu"] == 1400
    assert (tmp_path / "resolv.conf").read_text() == "search rescue.test\nnameserver 192.0.2.53\n"
    # the server reachable through it: real traffic between our own test hosts
    ping = subprocess.run(  # noqa: S603 - test only
        ["ip", "netns", "exec", net.client, "/bin/busybox", "ping", "-c", "1", "-W", "2", "192.0.2.1"],
        capture_output=True, text=True, check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_lease_lines_parse_and_a_newline_cannot_add_keys() -> None:
    text = "\n".join([
        "interface=eth0", "ip=10.0.2.15", "subnet=255.255.255.0", "mask=24", "router=10.0.2.2 10.0.2.3",
        "dns=10.0.2.3 not-an-ip", "domain=example", "hostname=box", "mtu=1500", "serverid=10.0.2.2",
        "siaddr=10.0.2.2", "boot_file=pxelinux.0", "lease=86400", "ip=6.6.6.6",
    ])
    lease = parse_lease(text)
    assert lease == Lease("eth0", "10.0.2.15", 24, "10.0.2.2", ("10.0.2.3",), "example", "box", 1500,
                          "10.0.2.2", "10.0.2.2", "pxelinux.0", 86400)
    assert lease.cidr == "10.0.2.15/24"
    assert parse_lease("interface=eth1\nip=192.0.2.9\nsubnet=255.255.0.0\n").prefixlen == 16


def test_udhcpc_runs_in_the_foreground_and_ends_by_itself() -> None:
    argv = udhcpc_argv("eth1", discover_tries=4, pause_s=2)
    assert argv[:2] == ["/bin/busybox", "udhcpc"]
    assert {"-f", "-q", "-n"} <= set(argv)
    assert argv[argv.index("-i") + 1] == "eth1" and argv[argv.index("-t") + 1] == "4"
