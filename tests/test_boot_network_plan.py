"""The network plan (boot/network/plan.py): from the command line's network words and the
interfaces /sys shows, the ordered steps (bonds, VLANs, links up, DHCP or static per
interface, the DHCP race), what is reported and what the plan falls back to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from initrd_composer.boot.cmdline import parse_cmdline
from initrd_composer.boot.network.plan import (
    CreateBond,
    CreateVlan,
    Dhcp,
    DhcpRace,
    Interface,
    LinkUp,
    NetworkPlan,
    Ping,
    Static,
    network_wanted,
    plan_network,
    read_interfaces,
)

MAC0, MAC1, MAC2 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
BOOTIF1 = "BOOTIF=01-52-54-00-00-00-02"  # eth1's, as pxelinux writes it
# Two NICs with a link, one without (a cable not plugged in).
NICS = (Interface("eth0", MAC0, True), Interface("eth1", MAC1, True), Interface("eth2", MAC2, False))
RACE = (LinkUp("eth0"), LinkUp("eth1"), DhcpRace(("eth0", "eth1")))


def plan(text: str, nics: tuple[Interface, ...] = NICS) -> NetworkPlan:
    cfg = parse_cmdline(text)
    assert cfg.problems == (), cfg.problems
    return plan_network(cfg, nics)


# -- the inventory from /sys ----------------------------------------------------------


def _netdev(root: Path, name: str, mac: str, *, type_: str = "1", carrier: str | None = "1",
            device: bool = True, wireless: bool = False) -> None:  # fmt: skip
    entry = root / "class" / "net" / name
    entry.mkdir(parents=True)
    (entry / "address").write_text(mac + "\n")
    (entry / "type").write_text(type_ + "\n")
    if carrier is not None:  # a link that is down has an unreadable carrier: left out here
        (entry / "carrier").write_text(carrier + "\n")
    if device:
        pci = root / "devices" / "pci0000:00" / f"0000:00:0{len(os.listdir(root / 'class' / 'net'))}.0"
        pci.mkdir(parents=True)
        (entry / "device").symlink_to(pci)
    if wireless:
        (entry / "wireless").mkdir()


def test_read_interfaces_keeps_ethernet_and_tells_physical_from_virtual(tmp_path: Path) -> None:
    _netdev(tmp_path, "lo", "00:00:00:00:00:00", type_="772", device=False)
    _netdev(tmp_path, "eth1", "52:54:00:AA:BB:02", carrier="0")
    _netdev(tmp_path, "eth0", MAC0)
    _netdev(tmp_path, "ens4", MAC2, carrier=None)
    _netdev(tmp_path, "bond0", "de:ad:be:ef:00:01", device=False)  # made by loading bonding
    _netdev(tmp_path, "ib0", "80:00:00:48:fe:80", type_="32")  # InfiniBand
    _netdev(tmp_path, "wlan0", "52:54:00:00:00:99", wireless=True)
    _netdev(tmp_path, "sit0", "00:00:00:00", type_="776", device=False)
    assert read_interfaces(str(tmp_path)) == (
        Interface("bond0", "de:ad:be:ef:00:01", True, "virtual"),
        Interface("ens4", MAC2, False, "physical"),
        Interface("eth0", MAC0, True, "physical"),
        Interface("eth1", "52:54:00:aa:bb:02", False, "physical"),
    )


def test_read_interfaces_without_class_net(tmp_path: Path) -> None:
    assert read_interfaces(str(tmp_path)) == ()


# -- DHCP when nothing names an interface --------------------------------------------


@pytest.mark.parametrize("text", ["ip=dhcp", "ip=on", "ip=any", "ip=::::::dhcp", "ip=single-dhcp", "pxe", ""])
def test_no_interface_named_races_dhcp_on_every_interface_with_a_carrier(text: str) -> None:
    p = plan(text)
    assert p.steps == RACE  # eth2 has no carrier: not a candidate, not brought up
    assert (p.problems, p.ping) == ((), None)


def test_with_no_carrier_anywhere_every_interface_is_tried() -> None:
    nics = tuple(Interface(i.name, i.mac, False) for i in NICS)
    p = plan("ip=dhcp", nics)
    assert p.steps == (LinkUp("eth0"), LinkUp("eth1"), LinkUp("eth2"), DhcpRace(("eth0", "eth1", "eth2")))
    assert p.notes == ("no interface shows a carrier yet: DHCP on every one",)


def test_one_candidate_is_plain_dhcp_and_virtual_interfaces_are_no_candidates() -> None:
    nics = (Interface("bond0", "de:ad:be:ef:00:01", True, "virtual"), NICS[0], NICS[2])
    assert plan("ip=dhcp", nics).steps == (LinkUp("eth0"), Dhcp("eth0"))


def test_no_interface_at_all_is_reported() -> None:
    p = plan("ip=dhcp", ())
    assert p.steps == ()
    assert p.problems == ("ip= (dhcp): no interface left to configure",)


def test_the_hostname_of_a_deviceless_word_goes_with_the_race() -> None:
    assert plan("ip=::::rescue-01::dhcp").steps[-1] == DhcpRace(("eth0", "eth1"), hostname="rescue-01")


# -- ipconf= (MondoRescue) -------------------------------------------------------------


def test_ipconf_dhcp() -> None:
    p = plan("ipconf=eth1:dhcp")
    assert p.steps == (LinkUp("eth1"), Dhcp("eth1"))
    assert p.problems == p.notes == ()


def test_ipconf_static() -> None:
    p = plan("ipconf=eth0:10.0.2.15:255.255.255.0:10.0.2.255:10.0.2.2")
    assert p.steps == (LinkUp("eth0"), Static("eth0", "10.0.2.15", 24, "10.0.2.2", "10.0.2.255"))
    assert plan("ipconf=eth0:172.16.9.2:20::").steps[-1] == Static("eth0", "172.16.9.2", 20)


# -- ip= --------------------------------------------------------------------------------


def test_static_ip_with_all_ten_kernel_fields() -> None:
    p = plan("ip=10.0.2.15:10.0.2.4:10.0.2.2:255.255.255.0:rescue:eth1:off:10.0.2.3:10.0.2.5:10.0.2.6")
    assert p.steps == (
        LinkUp("eth1"),
        Static("eth1", "10.0.2.15", 24, "10.0.2.2", hostname="rescue", dns=("10.0.2.3", "10.0.2.5")),
    )
    assert (p.nameservers, p.ntp_servers) == (("10.0.2.3", "10.0.2.5"), ("10.0.2.6",))


@pytest.mark.parametrize(
    ("address", "prefix"), [("10.1.2.3", 8), ("127.0.0.9", 8), ("172.16.0.5", 16), ("191.0.0.1", 16),
                            ("192.168.1.20", 24), ("223.1.1.1", 24)]
)  # fmt: skip
def test_static_without_netmask_takes_the_classful_default_with_a_note(address: str, prefix: int) -> None:
    p = plan(f"ip={address}:::::eth0:none")
    assert p.steps[-1] == Static("eth0", address, prefix)
    assert p.notes == (f"ip= (static {address} on eth0): no netmask; /{prefix} from the address's class, "
                       "as the kernel does",)  # fmt: skip


def test_netmask_as_prefix_or_cidr_client() -> None:
    static = Static("eth0", "10.0.2.15", 22, "10.0.2.2")
    assert plan("ip=10.0.2.15::10.0.2.2:22::eth0:none").steps[-1] == static
    assert plan("ip=10.0.2.15/27:::::eth0:none").steps[-1] == Static("eth0", "10.0.2.15", 27)


def test_ipv6_static_and_autoconf() -> None:
    p = plan("ip=[2001:db8::5]::[2001:db8::1]:64::eth0:none:[2001:db8::53] ip=eth1:auto6")
    assert p.steps == (
        LinkUp("eth0"), LinkUp("eth1"),
        Static("eth0", "2001:db8::5", 64, "2001:db8::1", dns=("2001:db8::53",)), Dhcp("eth1", "auto6"),
    )  # fmt: skip
    assert p.nameservers == ("2001:db8::53",)


def test_a_static_address_without_a_device_goes_to_the_first_candidate() -> None:
    p = plan("ip=10.0.2.15::10.0.2.2:255.255.255.0")
    assert p.steps == (LinkUp("eth0"), Static("eth0", "10.0.2.15", 24, "10.0.2.2"))
    assert p.notes == ("ip= (static 10.0.2.15): no device named; eth0, the first candidate, gets it",)


def test_dhcp_with_a_client_address_asks_for_it_and_sends_the_client_id() -> None:
    assert plan("ip=10.0.2.15::::h:eth0:dhcp").steps[-1] == Dhcp("eth0", hostname="h", request="10.0.2.15")
    assert plan("ip=dhcp,1,rescue").steps[-1] == DhcpRace(("eth0", "eth1"), client_id="1,rescue")
    assert plan("ip=:::::eth1:dhcp,61,rescue").steps[-1] == Dhcp("eth1", client_id="61,rescue")


@pytest.mark.parametrize("method", ["bootp", "rarp", "both"])
def test_what_this_image_cannot_do_is_done_with_dhcp_and_said(method: str) -> None:
    p = plan(f"ip=:::::eth0:{method}")
    assert p.steps == (LinkUp("eth0"), Dhcp("eth0"))
    assert p.notes == (f"ip= (dhcp on eth0): {method}: done with DHCP (a DHCP server answers BOOTP; "
                       "RARP is not supported)",)  # fmt: skip


def test_several_ip_words_each_configure_their_interface_in_order() -> None:
    p = plan("ip=eth1:dhcp ip=10.0.2.15::10.0.2.2:24::eth0:none ip=eth2:dhcp6")
    assert p.steps == (
        LinkUp("eth0"), LinkUp("eth1"), LinkUp("eth2"),
        Dhcp("eth1"), Static("eth0", "10.0.2.15", 24, "10.0.2.2"), Dhcp("eth2", "dhcp6"),
    )  # fmt: skip
    assert p.problems == ()


def test_ipv4_and_ipv6_on_one_interface_and_dracuts_method_list() -> None:
    expected = (LinkUp("eth0"), Dhcp("eth0"), Dhcp("eth0", "dhcp6"))
    assert plan("ip=eth0:dhcp ip=eth0:dhcp6").steps == expected
    assert plan("ip=eth0:dhcp,dhcp6").steps == expected


def test_an_interface_configured_twice_takes_the_last_word() -> None:
    cfg = parse_cmdline("ipconf=eth0:dhcp ip=10.0.2.15::10.0.2.2:24::eth0:none")
    p = plan_network(cfg, NICS)
    assert p.steps == (LinkUp("eth0"), Static("eth0", "10.0.2.15", 24, "10.0.2.2"))
    assert p.problems == ("ipconf=eth0:dhcp: eth0 configured again by ip= (static 10.0.2.15 on eth0); "
                          "the last one wins",)  # fmt: skip


def test_one_default_route() -> None:
    p = plan("ip=10.0.2.15::10.0.2.2:24::eth0:none ip=10.0.3.15::10.0.3.1:24::eth1:none")
    assert p.steps[-2:] == (Static("eth0", "10.0.2.15", 24, "10.0.2.2"), Static("eth1", "10.0.3.15", 24))
    assert p.notes == ("eth1: gateway 10.0.3.1 not used; default route via 10.0.2.2",)


def test_dracut_mtu_and_macaddr_go_on_the_link() -> None:
    p = plan("ip=eth0:dhcp:9000:02:00:00:00:00:0a ip=eth1:dhcp::02-00-00-00-00-0b")
    assert p.steps == (
        LinkUp("eth0", 9000, "02:00:00:00:00:0a"), LinkUp("eth1", None, "02:00:00:00:00:0b"),
        Dhcp("eth0"), Dhcp("eth1"),
    )  # fmt: skip
    p = plan("ip=10.0.2.15::10.0.2.2:24:h:eth1:none:1500:02:00:00:00:00:0c")
    assert p.steps == (LinkUp("eth1", 1500, "02:00:00:00:00:0c"),
                       Static("eth1", "10.0.2.15", 24, "10.0.2.2", hostname="h"))  # fmt: skip
    # a device-less word's MTU applies to every candidate; its MAC to none of several
    p = plan("ip=::::::dhcp:1400:02:00:00:00:00:0d")
    assert p.steps == (LinkUp("eth0", 1400), LinkUp("eth1", 1400), DhcpRace(("eth0", "eth1")))
    assert p.notes == ("ip= (dhcp): macaddr 02:00:00:00:00:0d not set: no single interface for it",)


# -- ip=off --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["ip=off", "ip=none", "ip=dhcp ip=off"])
def test_ip_off_alone_means_no_network(text: str) -> None:
    cfg = parse_cmdline(text)
    p = plan_network(cfg, NICS)
    assert p.steps == ()
    assert p.notes == ("ip= (off): no network is configured",)
    assert network_wanted(cfg) is False


def test_ip_off_with_network_media_is_reported() -> None:
    p = plan("ip=off nfsmount=10.0.2.2:/srv")
    assert p.steps == ()
    assert p.problems == ("ip= (off): the network stays down, but the restore data is on it",)


def test_ip_off_keeps_the_named_interfaces_only() -> None:
    assert plan("ip=off ip=eth1:dhcp").steps == (LinkUp("eth1"), Dhcp("eth1"))
    assert plan("ip=eth0:off").steps == (LinkUp("eth0"),)  # up, without an address


# -- BOOTIF --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["ip=dhcp", "pxe", "ip=::::::dhcp", ""])
def test_bootif_picks_the_second_of_two_nics(text: str) -> None:
    p = plan(f"{text} {BOOTIF1}")
    assert p.steps == (LinkUp("eth1"), Dhcp("eth1"))
    assert p.problems == ()


def test_an_explicit_device_wins_over_bootif() -> None:
    assert plan(f"ipconf=eth0:dhcp {BOOTIF1}").steps == (LinkUp("eth0"), Dhcp("eth0"))
    assert plan(f"ip=eth0:dhcp {BOOTIF1}").steps == (LinkUp("eth0"), Dhcp("eth0"))


def test_bootif_naming_no_interface_is_reported_and_the_race_runs() -> None:
    p = plan("pxe BOOTIF=01-52-54-00-00-00-99")
    assert p.steps == RACE
    assert p.problems == ("BOOTIF=52:54:00:00:00:99: no interface has this MAC "
                          "(is its driver in the image?)",)  # fmt: skip


def test_bootif_on_an_interface_without_carrier_is_still_used() -> None:
    # PXE booted through it a moment ago: the link is coming back up
    assert plan("pxe BOOTIF=01-52-54-00-00-00-03").steps == (LinkUp("eth2"), Dhcp("eth2"))


# -- bad or missing: reported, then DHCP -----------------------------------------------------


def test_a_bad_ip_value_is_reported_and_dhcp_races() -> None:
    cfg = parse_cmdline("ip=10.0.2.15::10.0.2.2:255.255.0.255::eth0:none")
    assert cfg.problems == ("ip=10.0.2.15::10.0.2.2:255.255.0.255::eth0:none: bad netmask '255.255.0.255'; "
                            "ignored",)  # fmt: skip
    assert network_wanted(cfg) is True
    assert plan_network(cfg, NICS).steps == RACE


@pytest.mark.parametrize("word", ["ip=eth9:dhcp", "ipconf=eth9:dhcp", "ip=10.0.2.15::10.0.2.2:24::eth9:none"])
def test_a_missing_device_is_reported_and_falls_back_to_dhcp(word: str) -> None:
    p = plan(word)
    assert p.steps == RACE  # a static address never moves to another interface
    assert len(p.problems) == 1
    assert "no interface eth9; instead: dhcp on eth0, eth1 at once, the first lease wins" in p.problems[0]


def test_a_missing_device_falls_back_to_bootifs_interface() -> None:
    p = plan(f"ipconf=eth9:dhcp {BOOTIF1}")
    assert p.steps == (LinkUp("eth1"), Dhcp("eth1"))
    assert p.problems == ("ipconf=eth9:dhcp: no interface eth9; instead: dhcp on eth1",)


def test_a_missing_device_beside_a_good_one_does_not_take_the_good_ones_interface() -> None:
    p = plan("ip=eth0:dhcp ip=eth9:dhcp")
    assert p.steps == (LinkUp("eth0"), LinkUp("eth1"), Dhcp("eth0"), Dhcp("eth1"))
    assert p.problems == ("ip= (dhcp on eth9): no interface eth9; instead: dhcp on eth1",)


# -- bonds and VLANs -----------------------------------------------------------------------------


def test_a_vlan_on_a_bond_of_two_nics_with_a_static_address() -> None:
    p = plan("bond=bond0:eth0,eth1:mode=active-backup,miimon=100:9000 vlan=vlan0005:bond0 "
             "ip=10.0.5.2::10.0.5.1:255.255.255.0:rescue:vlan0005:none "
             "nameserver=10.0.5.53 ping=3")  # fmt: skip
    assert p.steps == (
        CreateBond("bond0", ("eth0", "eth1"), (("mode", "active-backup"), ("miimon", "100"))),
        CreateVlan("vlan0005", "bond0", 5),
        LinkUp("bond0", 9000),
        LinkUp("vlan0005"),
        Static("vlan0005", "10.0.5.2", 24, "10.0.5.1", hostname="rescue"),
    )
    assert (p.nameservers, p.ping, p.problems) == (("10.0.5.53",), Ping("10.0.5.1", 3), ())


def test_bare_bond_is_dracuts_default_and_gets_dhcp() -> None:
    p = plan("bond")
    assert p.steps == (CreateBond("bond0", ("eth0", "eth1"), (("mode", "balance-rr"),)), LinkUp("bond0"),
                       Dhcp("bond0"))  # fmt: skip


def test_created_vlans_are_the_default_targets() -> None:
    p = plan("vlan=eth0.7 vlan=eth1.0008:eth1 ip=dhcp")
    assert p.steps == (
        CreateVlan("eth0.7", "eth0", 7), CreateVlan("eth1.0008", "eth1", 8),
        LinkUp("eth0"), LinkUp("eth1"), LinkUp("eth0.7"), LinkUp("eth1.0008"),
        DhcpRace(("eth0.7", "eth1.0008")),
    )  # fmt: skip


def test_a_bond_with_a_missing_slave_is_made_of_the_others() -> None:
    p = plan("bond=bond0:eth1,eth7")
    assert p.steps[0] == CreateBond("bond0", ("eth1",), (("mode", "balance-rr"),))
    assert p.problems == ("bond bond0: slave eth7: no such interface",)


def test_a_bond_without_any_slave_is_not_created_and_its_words_fall_back() -> None:
    p = plan("bond=bond0:eth7,eth8 ip=bond0:dhcp")
    assert p.steps == RACE
    assert p.problems == (
        "bond bond0: slave eth7: no such interface",
        "bond bond0: slave eth8: no such interface",
        "bond bond0: none of its slaves is here; not created",
        "ip= (dhcp on bond0): no interface bond0; instead: dhcp on eth0, eth1 at once, the first lease wins",
    )


def test_a_word_for_a_slave_falls_back_to_the_bond() -> None:
    p = plan("bond=bond0:eth0,eth2 ip=eth0:dhcp ip=eth1:dhcp")
    assert p.steps == (
        CreateBond("bond0", ("eth0", "eth2"), (("mode", "balance-rr"),)),
        LinkUp("eth1"), LinkUp("bond0"), Dhcp("eth1"), Dhcp("bond0"),
    )  # fmt: skip
    assert p.problems == ("ip= (dhcp on eth0): eth0 is a slave of bond0; instead: dhcp on bond0",)


def test_slaves_are_never_raced() -> None:
    p = plan("bond=bond0:eth0 vlan=bond0.5:bond0 ip=bond0.5:dhcp ip=eth9:dhcp")
    assert p.steps[-2:] == (Dhcp("bond0.5"), Dhcp("eth1"))  # eth0 is the bond's


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("vlan=eth0.5:eth9", "vlan eth0.5: no parent interface eth9; not created"),
        ("bond=bond0:eth0,eth1 vlan=eth0.5:eth0",
         "vlan eth0.5: its parent eth0 is a slave of bond0: put the VLAN on the bond; not created"),
        ("vlan=eth0.5:eth0 vlan=eth0.5.6:eth0.5",
         "vlan eth0.5.6: a VLAN on a VLAN is not supported; not created"),
        ("vlan=eth0.5:eth0 vlan=vlan5:eth0", "vlan vlan5: VLAN 5 on eth0 is already created; not created"),
        ("bond=eth1:eth0", "bond eth1: a network card has that name; not created"),
        ("bond=bond0:eth0 bond=bond1:eth0,eth1", "bond bond1: slave eth0: already a slave of bond0"),
    ],
)  # fmt: skip
def test_vlan_and_bond_conflicts_are_reported(text: str, problem: str) -> None:
    assert problem in plan(text).problems


def test_a_vlan_named_like_a_network_card_is_not_created() -> None:
    p = plan("vlan=vlan5:eth0", (*NICS, Interface("vlan5", "52:54:00:00:00:05", True)))
    assert p.problems == ("vlan vlan5: a network card has that name; not created",)
    assert not any(isinstance(s, CreateVlan) for s in p.steps)


def test_a_vlan_name_without_an_id_is_refused_by_the_parser_and_dhcp_runs() -> None:
    cfg = parse_cmdline("vlan=eth1:eth0")
    assert cfg.vlans == () and len(cfg.problems) == 1
    assert plan_network(cfg, NICS).steps == RACE


def test_a_bond_the_bonding_module_already_made_is_reused() -> None:
    nics = (*NICS, Interface("bond0", "de:ad:be:ef:00:01", False, "virtual"))
    p = plan("bond=bond0:eth0,eth1 ip=bond0:dhcp", nics)
    assert p.steps == (CreateBond("bond0", ("eth0", "eth1"), (("mode", "balance-rr"),)), LinkUp("bond0"),
                       Dhcp("bond0"))  # fmt: skip


# -- nameservers, ping ---------------------------------------------------------------------------


def test_nameservers_in_order_without_repeats() -> None:
    p = plan("nameserver=10.0.0.53 ip=10.0.2.15::10.0.2.2:24::eth0:none:10.0.0.54:10.0.0.53 "
             "nameserver=[2001:db8::35]")
    assert p.nameservers == ("10.0.0.53", "2001:db8::35", "10.0.0.54")


@pytest.mark.parametrize(
    ("text", "ping"),
    [
        ("ping=3 nfsmount=10.0.2.2:/srv", Ping("10.0.2.2", 3)),
        ("ping=2 netfsmount=backup.example:/srv ip=eth0:dhcp", Ping("backup.example", 2)),
        ("ping=1 url=http://[2001:db8::2]:8000/images/", Ping("2001:db8::2", 1)),
        ("ping=4 url=https://user@backup.example/x", Ping("backup.example", 4)),
        ("ping=4 url=http://[2001:db8::2/x", Ping("", 4)),  # a bad URL is the HTTP stage's to report
        ("ping=5 ipconf=eth0:10.0.2.15:255.255.255.0::10.0.2.2", Ping("10.0.2.2", 5)),
        ("ping=5 ip=dhcp", Ping("", 5)),  # the lease's router, known only later
        ("ping=0 nfsmount=10.0.2.2:/srv", None),
        ("nfsmount=10.0.2.2:/srv", None),
    ],
)
def test_ping_target_and_count(text: str, ping: Ping | None) -> None:
    assert plan(text).ping == ping


# -- which stages need the network ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("", False), ("nuke", False), ("BOOTIF=01-52-54-00-00-00-02", False), ("nameserver=10.0.0.53", False),
        ("ping=3", False), ("ip=off", False), ("ip=none", False), ("ip=dhcp ip=off", False),
        ("pxe", True), ("nfsmount=s:/p", True), ("netfsmount=s:/p", True), ("url=http://h/x", True),
        ("ip=dhcp", True), ("ip=off ip=dhcp", True), ("ip=eth0:off", True), ("ip=off ip=eth0:dhcp", True),
        ("ipconf=eth0:dhcp", True), ("vlan=eth0.5", True), ("bond", True),
        ("ip=garbage", True), ("ipconf=eth0", True), ("vlan=x", True), ("bond=a:b:c:d:e", True),
        ("nameserver=x", False),
    ],
)  # fmt: skip
def test_network_wanted(text: str, wanted: bool) -> None:
    assert network_wanted(parse_cmdline(text)) is wanted


# -- never raising, always consistent --------------------------------------------------------------

_NAMES = ["eth0", "eth1", "eth2", "bond0", "eth0.5", "vlan7", "eth9"]
_net_word = st.one_of(
    st.builds("ip={}:{}".format, st.sampled_from(["", *_NAMES]), st.sampled_from(["dhcp", "off", "dhcp6"])),
    st.builds("ip=10.0.{}.9::10.0.{}.1:24::{}:none".format, st.integers(0, 9), st.integers(0, 9),
              st.sampled_from(_NAMES)),
    st.builds("ipconf={}:dhcp".format, st.sampled_from(_NAMES)),
    st.builds("vlan={}:{}".format, st.sampled_from(["eth0.5", "vlan7", "bond0.9"]), st.sampled_from(_NAMES)),
    st.builds("bond=bond0:{}".format, st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3, unique=True)
              .map(",".join)),
    st.sampled_from(["ip=dhcp", "ip=off", "bond", "pxe", "BOOTIF=01-52-54-00-00-00-02",
                     "BOOTIF=01-02-00-00-00-00-09", "ip=10.0.2.15::10.0.2.2", "ping=2",
                     "nfsmount=10.0.2.2:/x", "ip=::::::dhcp:1400", "url=http://[x/", "url=http://h:99/"]),
    st.text(max_size=20),
)  # fmt: skip
_nics = st.lists(
    st.builds(Interface, st.sampled_from(["eth0", "eth1", "eth2", "bond0"]),
              st.sampled_from([MAC0, MAC1, MAC2]), st.booleans(), st.sampled_from(["physical", "virtual"])),
    max_size=4, unique_by=lambda i: i.name,
).map(tuple)  # fmt: skip


@given(st.lists(_net_word, max_size=7).map(" ".join), _nics)
@settings(max_examples=500)
def test_every_plan_is_consistent(text: str, nics: tuple[Interface, ...]) -> None:
    """Whatever the words and interfaces: no exception; every configured or raced interface
    exists or is created, and is brought up before it is configured; each link once."""
    cfg = parse_cmdline(text)
    p = plan_network(cfg, nics)
    created = {s.name for s in p.steps if isinstance(s, CreateBond | CreateVlan)}
    slaves = {n for s in p.steps if isinstance(s, CreateBond) for n in s.slaves}
    up = [s.name for s in p.steps if isinstance(s, LinkUp)]
    assert len(up) == len(set(up))
    assert not slaves & set(up)
    for i, step in enumerate(p.steps):
        names: tuple[str, ...] = ()
        if isinstance(step, Dhcp | Static):
            names = (step.interface,)
        elif isinstance(step, DhcpRace):
            assert len(step.candidates) >= 2
            names = step.candidates
        elif isinstance(step, CreateVlan):
            assert step.parent in {n.name for n in nics} | created
        for name in names:
            assert name in {n.name for n in nics} | created
            assert name not in slaves
            assert LinkUp(name) in [replace_link(s) for s in p.steps[:i]]
    if not (cfg.ip or cfg.ipconf) and any(n.kind == "physical" for n in nics):
        # nothing asked for: some interface (or a bond or VLAN made of them) gets DHCP
        assert any(isinstance(s, Dhcp | DhcpRace) for s in p.steps), p


def replace_link(step: object) -> object:
    """A LinkUp without its mtu/mac, to compare names only."""
    return LinkUp(step.name) if isinstance(step, LinkUp) else step
