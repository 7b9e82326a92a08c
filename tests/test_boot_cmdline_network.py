"""The network words of the kernel command line as /init reads them: MondoRescue's ipconf=, the
kernel's and dracut's ip= forms, BOOTIF=, ping=, nameserver=, vlan= and bond=; malformed values
reported, never raised (the rest of the command line: tests/test_boot_cmdline.py)."""
from __future__ import annotations

import pytest

from initrd_composer.boot.cmdline import (
    Bond,
    BootConfig,
    IpConf,
    KernelIp,
    Vlan,
    parse_cmdline,
)
from initrd_composer.boot.network.words import classful_prefixlen, prefixlen, split_fields

# -- network ------------------------------------------------------------------------------


def test_ipconf_static_and_dhcp() -> None:
    cfg = parse_cmdline("ipconf=eth0:10.0.2.15:255.255.255.0:10.0.2.255:10.0.2.2")
    assert cfg.ipconf == IpConf("eth0", False, "10.0.2.15", "255.255.255.0", "10.0.2.255", "10.0.2.2")
    assert parse_cmdline("ipconf=eth1:dhcp").ipconf == IpConf(device="eth1", dhcp=True)
    # broadcast and gateway may stay empty
    assert parse_cmdline("ipconf=eth0:10.0.0.5:255.0.0.0::").ipconf == IpConf(
        "eth0", False, "10.0.0.5", "255.0.0.0", "", ""
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "eth0",
        "eth0:static",
        ":dhcp",
        "eth0:dhcp:x",
        "eth0:10.0.0.300:255.255.255.0:10.0.0.255:10.0.0.1",
        "eth0::255.255.255.0:10.0.0.255:10.0.0.1",
        "eth0:10.0.0.5:255.255.255.0:10.0.0.255",
        "eth0:10.0.0.5:mask:10.0.0.255:10.0.0.1",
        ":10.0.0.5:255.255.255.0:10.0.0.255:10.0.0.1",
    ],
)
def test_malformed_ipconf_is_reported_and_ignored(value: str) -> None:
    cfg = parse_cmdline(f"ipconf={value} nuke")
    assert cfg.ipconf is None
    assert cfg.mode == "nuke"
    assert len(cfg.problems) == 1
    assert cfg.problems[0].startswith(f"ipconf={value}: ")
    assert cfg.problems[0].endswith("; ignored")


def test_ipconf_inside_another_word_is_not_ipconf() -> None:
    for word in ("myipconf=eth0:dhcp", "ipconfx=eth0:dhcp", "xipconf=eth0:dhcp"):
        cfg = parse_cmdline(word)
        assert cfg.ipconf is None
        assert cfg.unknown == (word,)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("dhcp", KernelIp("", "dhcp")),
        ("on", KernelIp("", "dhcp")),
        ("any", KernelIp("", "dhcp")),
        ("off", KernelIp("", "off")),
        ("dhcp6", KernelIp("", "dhcp6")),
        ("eth0:dhcp", KernelIp("eth0", "dhcp")),
        ("eth0:on", KernelIp("eth0", "dhcp")),
        ("ens3:auto6", KernelIp("ens3", "auto6")),
        (
            "10.0.2.15::10.0.2.2:255.255.255.0:rescue:eth0:none",
            KernelIp("eth0", "static", "10.0.2.15", "10.0.2.2", "255.255.255.0", "rescue"),
        ),
        (
            "10.0.2.15:10.0.2.2:10.0.2.2:255.255.255.0:rescue:eth0:off",
            KernelIp("eth0", "static", "10.0.2.15", "10.0.2.2", "255.255.255.0", "rescue", server="10.0.2.2"),
        ),
        (
            "10.0.2.15::10.0.2.2:255.255.255.0",
            KernelIp("", "static", "10.0.2.15", "10.0.2.2", "255.255.255.0"),
        ),
        ("10.0.2.15:::255.0.0.0::eth1:", KernelIp("eth1", "static", "10.0.2.15", "", "255.0.0.0")),
        ("10.0.2.15::::h:eth0:dhcp", KernelIp("eth0", "dhcp", "10.0.2.15", "", "", "h")),
        # the kernel's autoconfiguration forms with no client address
        (":::::eth0:dhcp", KernelIp("eth0", "dhcp")),
        ("::::::dhcp", KernelIp("", "dhcp")),
        (":::::eth0:", KernelIp("eth0", "dhcp")),
        (":::::eth0:off", KernelIp("eth0", "off")),
    ],
)
def test_kernel_ip_forms(value: str, expected: KernelIp) -> None:
    cfg = parse_cmdline(f"ip={value}")
    assert cfg.problems == ()
    assert cfg.ip == (expected,)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "eth0:bogus",
        "10.0.2.15",
        "10.0.2.15::gw:255.255.255.0",
        "10.0.2.15::10.0.2.2:255.255.255.999",
        "host.example::10.0.2.2:255.255.255.0",
        "10.0.2.15::10.0.2.2:255.255.255.0:h:eth0:bogus",
        ":::::eth0:static",
    ],
)
def test_malformed_ip_is_reported_and_ignored(value: str) -> None:
    cfg = parse_cmdline(f"ip={value} expert")
    assert cfg.ip == ()
    assert cfg.mode == "expert"
    assert len(cfg.problems) == 1 and cfg.problems[0].startswith(f"ip={value}: ")


@pytest.mark.parametrize(
    ("value", "mac"),
    [
        ("01-aa-bb-cc-dd-ee-ff", "aa:bb:cc:dd:ee:ff"),
        ("01-52-54-00-12-34-56", "52:54:00:12:34:56"),
        ("01-AA-BB-CC-DD-EE-0F", "aa:bb:cc:dd:ee:0f"),
        ("52:54:00:12:34:56", "52:54:00:12:34:56"),
    ],
)
def test_bootif(value: str, mac: str) -> None:
    cfg = parse_cmdline(f"BOOTIF={value}")
    assert (cfg.bootif, cfg.problems) == (mac, ())


@pytest.mark.parametrize(
    "value",
    [
        "",
        "01-aa-bb-cc-dd-ee",  # one octet short: must not be read as the MAC 01:aa:bb:cc:dd:ee
        "01-aa-bb-cc-dd-ee-ff-00",
        "01-aa-bb-cc-dd-ee-fg",
        "01-aabbccddeeff",
        "aa-bb-cc",
    ],
)
def test_bad_bootif_is_reported_and_ignored(value: str) -> None:
    cfg = parse_cmdline(f"BOOTIF={value}")
    assert cfg.bootif is None
    assert len(cfg.problems) == 1 and cfg.problems[0].startswith(f"BOOTIF={value}: ")


def test_bootif_is_case_sensitive_like_pxelinux_writes_it() -> None:
    word = "bootif=01-aa-bb-cc-dd-ee-ff"
    assert parse_cmdline(word) == BootConfig(unknown=(word,))


def test_ping() -> None:
    assert parse_cmdline("ping=3").ping == 3
    assert parse_cmdline("ping=0").ping == 0
    for bad in ("", "x", "-1", "1.5", "3s", "²", "١٢"):
        cfg = parse_cmdline(f"ping={bad}")
        assert cfg.ping is None
        assert cfg.problems == (f"ping={bad}: expected a count; ignored",)


def test_ipconf_netmask_as_prefix_and_masks_with_holes() -> None:
    assert parse_cmdline("ipconf=eth0:10.0.0.5:24::10.0.0.1").ipconf == IpConf(
        "eth0", False, "10.0.0.5", "24", "", "10.0.0.1"
    )
    for mask in ("255.0.255.0", "0.0.0.255", "33", "0"):
        cfg = parse_cmdline(f"ipconf=eth0:10.0.0.5:{mask}::")
        assert cfg.ipconf is None
        assert cfg.problems[0].startswith(f"ipconf=eth0:10.0.0.5:{mask}::: bad ")


def test_a_second_different_ipconf_wins_and_is_reported() -> None:
    cfg = parse_cmdline("ipconf=eth0:dhcp ipconf=eth1:dhcp ipconf=eth1:dhcp")
    assert cfg.ipconf == IpConf("eth1", True)
    assert cfg.problems == ("ipconf=eth1:dhcp: ipconf= given before; the last one wins",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # what the kernel cannot do here is done with DHCP, and said
        ("bootp", KernelIp("", "dhcp", note="bootp: done with DHCP (a DHCP server answers BOOTP; RARP is not "
                                            "supported)")),
        ("::::::rarp", KernelIp("", "dhcp", note="rarp: done with DHCP (a DHCP server answers BOOTP; RARP is "
                                                 "not supported)")),
        ("none", KernelIp("", "off")),
        ("single-dhcp", KernelIp("", "dhcp")),
        ("ibft", KernelIp("", "ibft")),
        # the kernel's ten fields: client, server, gateway, netmask, host, device, autoconf, dns0, dns1, ntp0
        ("10.0.2.15:10.0.2.4:10.0.2.2:255.255.255.0:rescue:eth0:off:10.0.2.3:10.0.2.5:10.0.2.6",
         KernelIp("eth0", "static", "10.0.2.15", "10.0.2.2", "255.255.255.0", "rescue", server="10.0.2.4",
                  dns=("10.0.2.3", "10.0.2.5"), ntp="10.0.2.6")),
        (":::::eth0:dhcp:::10.0.2.6", KernelIp("eth0", "dhcp", ntp="10.0.2.6")),
        (":::::eth0:dhcp::10.0.2.5", KernelIp("eth0", "dhcp", dns=("10.0.2.5",))),
        # dracut: ...:method:mtu:macaddr (the MAC split on its colons, or with dashes)
        ("10.0.2.15::10.0.2.2:24:h:eth0:none:1500:52:54:00:12:34:56",
         KernelIp("eth0", "static", "10.0.2.15", "10.0.2.2", "24", "h", mtu=1500,
                  macaddr="52:54:00:12:34:56")),
        ("10.0.2.15::10.0.2.2:24:h:eth0:none::52-54-00-12-34-56",
         KernelIp("eth0", "static", "10.0.2.15", "10.0.2.2", "24", "h", macaddr="52:54:00:12:34:56")),
        ("10.0.2.15::10.0.2.2:24:h:eth0:none:9000",
         KernelIp("eth0", "static", "10.0.2.15", "10.0.2.2", "24", "h", mtu=9000)),
        # dracut's CIDR client and its brackets for IPv6
        ("10.0.2.15/23:::::eth0:none", KernelIp("eth0", "static", "10.0.2.15", netmask="23")),
        ("10.0.2.15/23::10.0.2.1:255.255.254.0::eth0:",
         KernelIp("eth0", "static", "10.0.2.15", "10.0.2.1", "255.255.254.0")),
        ("[2001:db8::5]::[2001:db8::1]:64::eth0:none:[2001:db8::53]:[2001:db8::54]",
         KernelIp("eth0", "static", "2001:db8::5", "2001:db8::1", "64",
                  dns=("2001:db8::53", "2001:db8::54"))),
        ("[2001:db8::5]/56:::::eth0:none", KernelIp("eth0", "static", "2001:db8::5", netmask="56")),
        # dracut's dev:method:mtu:macaddr
        ("eth0:dhcp:9000", KernelIp("eth0", "dhcp", mtu=9000)),
        ("eth0:dhcp::52:54:00:12:34:56", KernelIp("eth0", "dhcp", macaddr="52:54:00:12:34:56")),
        ("eth0:dhcp:1500:52-54-00-AB-CD-EF", KernelIp("eth0", "dhcp", mtu=1500, macaddr="52:54:00:ab:cd:ef")),
        ("enp3s0f1:dhcp6", KernelIp("enp3s0f1", "dhcp6")),
        ("eth0:ibft", KernelIp("eth0", "ibft")),
        # the kernel's DHCP client identifier
        ("dhcp,1,rescue-01", KernelIp("", "dhcp", client_id="1,rescue-01")),
        ("::::::dhcp,0,abc", KernelIp("", "dhcp", client_id="0,abc")),
        (":dhcp", KernelIp("", "dhcp")),
    ],
)  # fmt: skip
def test_kernel_and_dracut_ip_forms_in_full(value: str, expected: KernelIp) -> None:
    cfg = parse_cmdline(f"ip={value}")
    assert (cfg.ip, cfg.problems) == ((expected,), ())


def test_dracuts_method_list_gives_one_configuration_each() -> None:
    assert parse_cmdline("ip=eth0:dhcp,dhcp6:9000").ip == (
        KernelIp("eth0", "dhcp", mtu=9000), KernelIp("eth0", "dhcp6", mtu=9000)
    )


def test_several_ip_words_are_kept_in_order() -> None:
    cfg = parse_cmdline("ip=eth1:dhcp ip=bogus ip=10.0.2.15::10.0.2.2:24::eth0:none ip=off")
    assert cfg.ip == (
        KernelIp("eth1", "dhcp"),
        KernelIp("eth0", "static", "10.0.2.15", "10.0.2.2", "24"),
        KernelIp("", "off"),
    )
    assert cfg.problems == ("ip=bogus: unknown autoconf method 'bogus'; ignored",)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10.0.2.15", "a lone value is a method; a static address: 10.0.2.15::GW:NETMASK::DEV:none"),
        ("eth0:dhcp:67", "bad mtu '67' (68-65535)"),
        ("eth0:dhcp:70000", "bad mtu '70000' (68-65535)"),
        ("eth0:dhcp:1500:01:00:5e:00:00:01", "bad MAC address '01:00:5e:00:00:01' (unicast, six octets)"),
        ("eth0:dhcp:1500:52:54:00:12:34", "expected mtu:macaddr after the method"),
        ("eth0:dhcp:1500:52-54-00-12-34", "bad MAC address '52-54-00-12-34' (unicast, six octets)"),
        ("eth0:static", "static needs the client address: client::gw:netmask::dev:none"),
        ("this-name-is-too-long:dhcp", "bad interface name 'this-name-is-too-long'"),
        ("10.0.2.15/24::10.0.2.2:255.255.0.0::eth0:none",
         "netmask '255.255.0.0' and '10.0.2.15/24' disagree"),
        ("10.0.2.15/33:::::eth0:none", "bad prefix length '33'"),
        ("224.0.0.1:::::eth0:none", "'224.0.0.1' is not a unicast address"),
        ("0.0.0.0:::::eth0:none", "'0.0.0.0' is not a unicast address"),
        ("10.0.2.15::[2001:db8::1]:24::eth0:none",
         "gateway '[2001:db8::1]' is not of the client's IP version"),
        ("[2001:db8::5]:::::eth0:none", "an IPv6 address needs a prefix length"),
        ("[2001:db8::5::eth0:none", "bad address '[2001:db8::5::eth0:none'"),
        ("10.0.2.15::10.0.2.2:24:h:eth0:none:10.0.2.3:10.0.2.4:10.0.2.5:10.0.2.6",
         "bad field '10.0.2.3' after the method (dns0:dns1:ntp0 or mtu:macaddr)"),
        ("10.0.2.15::10.0.2.2:24:h:eth0:none:x",
         "bad field 'x' after the method (dns0:dns1:ntp0 or mtu:macaddr)"),
        ("10.0.2.15::10.0.2.2:24:a host:eth0:none", "bad hostname 'a host'"),
        ("dhcp,256,x", "bad DHCP client id 'dhcp,256,x'"),
        ("dhcp,zeroconf", "unknown autoconf method 'zeroconf'"),
    ],
)  # fmt: skip
def test_malformed_ip_says_why(value: str, reason: str) -> None:
    cfg = parse_cmdline(f'"ip={value}"')
    assert cfg.ip == ()
    assert cfg.problems == (f"ip={value}: {reason}; ignored",)


def test_fields_split_on_colons_outside_brackets() -> None:
    assert split_fields("[2001:db8::1]::eth0") == ["[2001:db8::1]", "", "eth0"]
    assert split_fields("a:[b:c]:[d") == ["a", "[b:c]", "[d"]
    assert split_fields("") == [""]


@pytest.mark.parametrize(
    ("mask", "length"),
    [("255.255.255.0", 24), ("255.255.255.255", 32), ("128.0.0.0", 1), ("255.255.254.0", 23),
     ("24", 24), ("32", 32), ("1", 1)],
)  # fmt: skip
def test_prefixlen(mask: str, length: int) -> None:
    assert prefixlen(mask) == length


def test_prefixlen_for_ipv6_and_classful_defaults() -> None:
    assert prefixlen("128", 6) == 128
    with pytest.raises(ValueError, match="bad netmask"):
        prefixlen("255.255.255.0", 6)
    assert [classful_prefixlen(a) for a in ("10.0.0.1", "172.16.0.1", "192.168.0.1")] == [8, 16, 24]


def test_nameservers_are_repeatable_and_normalised() -> None:
    cfg = parse_cmdline(
        "nameserver=10.0.0.53 nameserver=2001:DB8::53 nameserver=[2001:db8::54] nameserver=10.0.0.53"
    )
    assert cfg.nameservers == ("10.0.0.53", "2001:db8::53", "2001:db8::54", "10.0.0.53")
    for bad in ("", "dns.example", "10.0.0.300", "224.0.0.251", "0.0.0.0"):
        assert parse_cmdline(f"nameserver={bad}").problems[0].startswith(f"nameserver={bad}: expected")


@pytest.mark.parametrize(
    ("value", "vlan"),
    [
        ("vlan0005:eth0", Vlan("vlan0005", "eth0", 5)),  # dracut's four naming schemes
        ("vlan5:eth0", Vlan("vlan5", "eth0", 5)),
        ("eth0.0005:eth0", Vlan("eth0.0005", "eth0", 5)),
        ("eth0.5:eth0", Vlan("eth0.5", "eth0", 5)),
        ("vlan0010:bond0", Vlan("vlan0010", "bond0", 10)),  # decimal, not octal
        ("bond0.4094:bond0", Vlan("bond0.4094", "bond0", 4094)),
        ("eth0.100", Vlan("eth0.100", "eth0", 100)),  # the parent is in the name
        ("enp3s0.1.7", Vlan("enp3s0.1.7", "enp3s0.1", 7)),
    ],
)
def test_vlan_names_give_the_id(value: str, vlan: Vlan) -> None:
    cfg = parse_cmdline(f"vlan={value}")
    assert (cfg.vlans, cfg.problems) == ((vlan,), ())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("vlan0:eth0", "no VLAN id (1-4094) in the name 'vlan0': "
         "use vlan5, vlan0005, eth0.5 or eth0.0005"),
        ("eth0.4095:eth0", "no VLAN id (1-4094) in the name 'eth0.4095': "
         "use vlan5, vlan0005, eth0.5 or eth0.0005"),
        ("vlanx:eth0", "no VLAN id (1-4094) in the name 'vlanx': "
         "use vlan5, vlan0005, eth0.5 or eth0.0005"),
        ("eth0", "expected vlanname:parent, e.g. eth0.5:eth0 or vlan5:bond0"),
        ("eth0.5:eth0:x", "expected vlanname:parent, e.g. eth0.5:eth0 or vlan5:bond0"),
        ("", "expected vlanname:parent, e.g. eth0.5:eth0 or vlan5:bond0"),
        ("eth0.5:", "bad parent interface name ''"),
        ("eth0.5:eth0.5", "a VLAN cannot be its own parent"),
    ],
)
def test_bad_vlan_says_why(value: str, reason: str) -> None:
    cfg = parse_cmdline(f"vlan={value}")
    assert (cfg.vlans, cfg.problems) == ((), (f"vlan={value}: {reason}; ignored",))


RR = (("mode", "balance-rr"),)


@pytest.mark.parametrize(
    ("word", "bond"),
    [
        ("bond", Bond("bond0", ("eth0", "eth1"), RR)),  # dracut: bond0 of eth0,eth1, mode=balance-rr
        ("bond=", Bond("bond0", ("eth0", "eth1"), RR)),
        ("bond=bond1", Bond("bond1", ("eth0", "eth1"), RR)),
        ("bond=bond0:eth2,eth3", Bond("bond0", ("eth2", "eth3"), RR)),
        ("bond=bond0:eth0,eth1:mode=active-backup,miimon=100",
         Bond("bond0", ("eth0", "eth1"), (("mode", "active-backup"), ("miimon", "100")))),
        ("bond=bond0:eth0,eth1:mode=802.3ad,lacp_rate=fast,xmit_hash_policy=layer3+4:9000",
         Bond("bond0", ("eth0", "eth1"), (("mode", "802.3ad"), ("lacp_rate", "fast"),
                                          ("xmit_hash_policy", "layer3+4")), 9000)),
        ("bond=bond0:eth0:mode=1,arp_interval=100,arp_ip_target=10.0.0.1;10.0.0.2",
         Bond("bond0", ("eth0",), (("mode", "1"), ("arp_interval", "100"),
                                   ("arp_ip_target", "10.0.0.1;10.0.0.2")))),
        ("bond=:eth4::1500", Bond("bond0", ("eth4",), RR, 1500)),
    ],
)  # fmt: skip
def test_bond_forms(word: str, bond: Bond) -> None:
    cfg = parse_cmdline(word)
    assert (cfg.bonds, cfg.problems, cfg.unknown) == ((bond,), (), ())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("bond0:eth0:mode=fastest", "unknown bonding mode 'fastest'"),
        ("bond0:eth0:mode=7", "unknown bonding mode '7'"),
        ("bond0:eth0:miimon", "bad bonding option 'miimon' (key=value)"),
        ("bond0:eth0:Mode=1", "bad bonding option 'Mode=1' (key=value)"),
        ("bond0:eth0:miimon=1,miimon=2", "bonding option miimon given twice"),
        ("bond0:eth0,eth0", "bad slave list 'eth0,eth0'"),
        ("bond0:,", "bad slave list ','"),
        ("bond0:bond0", "bond0 cannot be its own slave"),
        ("bond0:eth0::60", "bad mtu '60' (68-65535)"),
        ("bond0:eth0:mode=1:1500:x", "expected bondname[:slaves[:options[:mtu]]]"),
        ("bond/0", "bad bond name 'bond/0'"),
    ],
)
def test_bad_bond_says_why(value: str, reason: str) -> None:
    cfg = parse_cmdline(f"bond={value}")
    assert (cfg.bonds, cfg.problems) == ((), (f"bond={value}: {reason}; ignored",))


def test_bond_and_vlan_lookalikes_are_not_ours() -> None:
    cfg = parse_cmdline("bonding vlan bondx=1 myvlan=eth0.5:eth0")
    assert (cfg.bonds, cfg.vlans) == ((), ())
    assert cfg.unknown == ("bonding", "vlan", "bondx=1", "myvlan=eth0.5:eth0")


def test_a_dracut_style_command_line() -> None:
    cfg = parse_cmdline(
        "rd.neednet=1 bond=bond0:eth0,eth1:mode=active-backup vlan=bond0.20:bond0 "
        "ip=192.168.20.5::192.168.20.1:255.255.255.0:web01:bond0.20:none "
        "nameserver=192.168.20.53 nameserver=192.168.20.54 BOOTIF=01-52-54-00-12-34-56 ping=2 nuke"
    )
    assert cfg == BootConfig(
        mode="nuke",
        ip=(KernelIp("bond0.20", "static", "192.168.20.5", "192.168.20.1", "255.255.255.0", "web01"),),
        nameservers=("192.168.20.53", "192.168.20.54"),
        vlans=(Vlan("bond0.20", "bond0", 20),),
        bonds=(Bond("bond0", ("eth0", "eth1"), (("mode", "active-backup"),)),),
        bootif="52:54:00:12:34:56",
        ping=2,
    )
