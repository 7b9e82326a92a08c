"""The network stage in a real boot: one --all-nics image, QEMU's user network (its DHCP
server answers with 10.0.2.15/24, router 10.0.2.2, DNS 10.0.2.3), the report's `network`
section and the `stage: network` console line read from the guest.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.image_fixtures import BuiltImage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures",)
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("network")]

MAC0, MAC1 = "52:54:00:12:34:60", "52:54:00:12:34:61"


def _boot(image: BuiltImage, append: str, nics: int = 1) -> tuple[dict[str, Any], list[str]]:
    args: list[str] = []
    for i, mac in enumerate((MAC0, MAC1)[:nics]):
        args += ["-netdev", f"user,id=n{i}", "-device", f"e1000,netdev=n{i},mac={mac}"]
    vmlinuz = Path(f"/boot/vmlinuz-{image.version}")
    result = qemu_boot.boot(vmlinuz, image.path, f"console=ttyS0 probe {append}", args, timeout=120)
    assert result.reason == "matched", "\n".join(result.lines[-40:])
    assert result.matched_line is not None
    report: dict[str, Any] = json.loads(result.matched_line.split(":", 1)[1])
    return report, list(result.lines)


def _stage_line(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("stage: network "))


def test_ip_dhcp_takes_the_lease(all_nics_image: BuiltImage) -> None:
    report, lines = _boot(all_nics_image, "ip=dhcp nameserver=10.0.2.3")
    net = report["network"]
    assert net["ok"] and net["errors"] == [] and net["problems"] == [], net
    (iface,) = net["interfaces"]
    assert (iface["mac"], iface["driver"], iface["method"]) == (MAC0, "e1000", "dhcp")
    assert (iface["address"], iface["gateway"], iface["dns"]) == ("10.0.2.15/24", "10.0.2.2", ["10.0.2.3"])
    assert _stage_line(lines) == f"stage: network ok {iface['interface']} dhcp 10.0.2.15/24"


def test_static_ipconf_and_bootif_picks_the_second_nic(all_nics_image: BuiltImage) -> None:
    # BOOTIF names the second NIC; ip=dhcp without a device goes there, not to the first
    report, _ = _boot(all_nics_image, "ip=dhcp BOOTIF=01-" + MAC1.replace(":", "-"), nics=2)
    net = report["network"]
    assert net["ok"], net
    assert [(i["mac"], i["method"]) for i in net["interfaces"]] == [(MAC1, "dhcp")]


def test_missing_device_and_bad_value_fall_back_to_dhcp(all_nics_image: BuiltImage) -> None:
    report, lines = _boot(all_nics_image, "ip=10.0.2.99:::255.255.255.0::eth7:off ip=garbage:::")
    net = report["network"]
    assert net["ok"], net
    configured = [(i["mac"], i["method"], i["address"]) for i in net["interfaces"]]
    assert configured == [(MAC0, "dhcp", "10.0.2.15/24")]
    assert any("eth7" in p for p in net["problems"]), net
    assert any("garbage" in p for p in report["cmdline"]["problems"]), report["cmdline"]
    assert _stage_line(lines).startswith("stage: network ok ")


def test_ipconf_dhcp_names_the_interface(all_nics_image: BuiltImage) -> None:
    report, _ = _boot(all_nics_image, "ipconf=eth0:dhcp")
    net = report["network"]
    assert [(i["interface"], i["method"], i["address"]) for i in net["interfaces"]] == [
        ("eth0", "dhcp", "10.0.2.15/24")
    ], net


def test_static_ipconf_and_ping_of_the_gateway(all_nics_image: BuiltImage) -> None:
    report, lines = _boot(all_nics_image, "ipconf=eth0:10.0.2.20:255.255.255.0:10.0.2.255:10.0.2.2 ping=3")
    net = report["network"]
    (iface,) = net["interfaces"]
    assert (iface["method"], iface["address"], iface["gateway"]) == ("static", "10.0.2.20/24", "10.0.2.2")
    assert net["ping"]["target"] == "10.0.2.2" and net["ping"]["ok"], net  # slirp answers its gateway
    assert _stage_line(lines) == "stage: network ok eth0 static 10.0.2.20/24"


def test_kernel_ip_ten_fields_static_with_dns(all_nics_image: BuiltImage) -> None:
    ip = "ip=10.0.2.21:10.0.2.2:10.0.2.2:255.255.255.0:rescue:eth0:off:10.0.2.3::"
    report, _ = _boot(all_nics_image, ip)
    (iface,) = report["network"]["interfaces"]
    assert (iface["interface"], iface["method"], iface["address"], iface["gateway"], iface["dns"]) == (
        "eth0", "static", "10.0.2.21/24", "10.0.2.2", ["10.0.2.3"]
    )


def test_vlan_on_a_bond_of_two_nics_with_a_static_address(all_nics_image: BuiltImage) -> None:
    words = ("bond=bond0:eth0,eth1:mode=active-backup,miimon=100 vlan=bond0.5:bond0"
             " ip=10.0.5.2:::255.255.255.0::bond0.5:off")
    report, lines = _boot(all_nics_image, words, nics=2)
    net = report["network"]
    assert net["ok"] and net["errors"] == [] and net["problems"] == [], net
    # read back from the kernel: the bond's mode and members, the VLAN's tag
    assert net["links"] == [
        {"name": "bond0", "kind": "bond", "mode": "active-backup", "slaves": ["eth0", "eth1"]},
        {"name": "bond0.5", "kind": "vlan", "parent": "bond0", "vlan_id": 5},
    ]
    (iface,) = net["interfaces"]
    assert (iface["interface"], iface["method"], iface["address"]) == ("bond0.5", "static", "10.0.5.2/24")
    assert iface["mac"] in (MAC0, MAC1)  # a bond takes its first member's address
    # the kernel loaded 8021q and bonding through the image's modprobe (request_module)
    assert any("8021q: 802.1Q VLAN Support" in line for line in lines)
    assert _stage_line(lines) == "stage: network ok bond0.5 static 10.0.5.2/24"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tagged_traffic_between_two_guests_over_a_vlan_on_a_bond(all_nics_image: BuiltImage) -> None:
    """Two guests on one QEMU socket network (raw Ethernet frames, tags and all): A puts VLAN 5
    on an active-backup bond whose primary member is on that wire, B a VLAN 5 on its only NIC;
    each pings the other (ping= targets the static gateway). B's eth0.5 receives only frames
    tagged 5, so an answer on either side means tagged traffic crossed the wire both ways."""
    port = _free_port()
    vmlinuz = Path(f"/boot/vmlinuz-{all_nics_image.version}")
    a_devices = ["-netdev", f"socket,id=n0,listen=127.0.0.1:{port}", "-device", f"e1000,netdev=n0,mac={MAC0}",
                 "-netdev", "user,id=n1", "-device", f"e1000,netdev=n1,mac={MAC1}"]  # fmt: skip
    b_devices = ["-netdev", f"socket,id=n0,connect=127.0.0.1:{port}",
                 "-device", "e1000,netdev=n0,mac=52:54:00:12:34:70"]  # fmt: skip
    a_words = ("bond=bond0:eth0,eth1:mode=active-backup,miimon=100,primary=eth0 vlan=bond0.5:bond0"
               " ip=10.0.5.2::10.0.5.1:255.255.255.0::bond0.5:off ping=40")  # fmt: skip
    b_words = "vlan=eth0.5:eth0 ip=10.0.5.1::10.0.5.2:255.255.255.0::eth0.5:off ping=40"
    results: dict[str, qemu_boot.BootResult] = {}

    def run(name: str, devices: list[str], words: str) -> None:
        results[name] = qemu_boot.boot(vmlinuz, all_nics_image.path, f"console=ttyS0 probe {words}", devices,
                                       timeout=150)  # fmt: skip

    guest_a = threading.Thread(target=run, args=("a", a_devices, a_words))
    guest_a.start()
    _wait_listening(port)  # B's qemu exits at once if nothing listens yet
    run("b", b_devices, b_words)
    guest_a.join()
    for name, peer in (("a", "10.0.5.1"), ("b", "10.0.5.2")):
        result = results[name]
        assert result.reason == "matched", "\n".join(result.lines[-40:])
        assert result.matched_line is not None
        net = json.loads(result.matched_line.split(":", 1)[1])["network"]
        assert net["ping"]["target"] == peer and net["ping"]["ok"], (name, net)
    net_a = json.loads(str(results["a"].matched_line).split(":", 1)[1])["network"]
    assert {"name": "bond0.5", "kind": "vlan", "parent": "bond0", "vlan_id": 5} in net_a["links"]


def _wait_listening(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if f"{port:04X}" in _listening_ports():
            return
        time.sleep(0.1)
    raise AssertionError(f"qemu never listened on 127.0.0.1:{port}")


def _listening_ports() -> set[str]:
    # /proc/net/tcp, not a connect(): QEMU's socket netdev takes the first connection as its peer
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":  # TCP_LISTEN
            ports.add(fields[1].split(":")[1])
    return ports
