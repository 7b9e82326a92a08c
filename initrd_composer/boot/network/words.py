"""The network words of the kernel command line, one word at a time.

Grammars: MondoRescue's ipconf=; the kernel's ip= (Documentation/admin-guide/nfs/nfsroot.rst);
dracut's ip=, vlan=, bond=, nameserver= (dracut.cmdline(7)); BOOTIF= as pxelinux's IPAPPEND 2
and iPXE write it. Each parser returns frozen dataclasses or raises ValueError with a reason;
the caller reports the word and goes on (dracut dies on a bad word; a rescue system must not).
Values are kept as written (dotted netmask or prefix length); the planner derives prefixlen.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import TypeAlias

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class IpConf:
    """ipconf=dev:ip:netmask:broadcast:gateway or ipconf=dev:dhcp (MondoRescue)."""

    device: str
    dhcp: bool
    address: str = ""
    netmask: str = ""
    broadcast: str = ""
    gateway: str = ""


@dataclass(frozen=True)
class KernelIp:
    """One ip= configuration, in the kernel's or dracut's form.

    method: dhcp (also the kernel's on/any and, with a note, bootp/rarp/both), dhcp6, auto6,
    ibft, static (an address with off/none or no method), off (no address).
    device "" means none named. With dhcp, `address` is the one to ask the server for."""

    device: str
    method: str
    address: str = ""
    gateway: str = ""
    netmask: str = ""  # dotted, a prefix length, or "" (from client/NN when written so)
    hostname: str = ""
    server: str = ""  # the kernel's server-ip, dracut's peer
    mtu: int | None = None
    macaddr: str = ""  # dracut: set this MAC on the interface
    dns: tuple[str, ...] = ()
    ntp: str = ""
    client_id: str = ""  # the kernel's ip=dhcp,TYPE,VALUE as "TYPE,VALUE"
    note: str = ""  # how a method this image does not have is done instead


@dataclass(frozen=True)
class Vlan:
    """vlan=NAME:PARENT; the VLAN id comes from the name (dracut's four naming schemes)."""

    name: str
    parent: str
    vlan_id: int


@dataclass(frozen=True)
class Bond:
    """bond=NAME[:SLAVES[:OPTIONS[:MTU]]]; options in the order given (mode must come first
    to the bonding driver, so the order is kept)."""

    name: str
    slaves: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    mtu: int | None = None


# -- small pieces --------------------------------------------------------------------


def valid_ifname(name: str) -> bool:
    """The kernel's dev_valid_name(): 1-15 bytes, not . or .., no '/', ':' or whitespace."""
    return (
        0 < len(name.encode()) < 16
        and name not in (".", "..")
        and not any(c in "/:" or c.isspace() for c in name)
    )


def _ifname(name: str, what: str = "interface") -> str:
    if not valid_ifname(name):
        raise ValueError(f"bad {what} name {name!r}")
    return name


def parse_address(text: str) -> Address:
    """IPv4 as is, IPv6 in brackets (it would split on ':' otherwise); unicast only."""
    try:
        if text.startswith("[") and text.endswith("]"):
            addr: Address = ipaddress.IPv6Address(text[1:-1])
        else:
            addr = ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"bad address {text!r}") from None
    if addr.is_multicast or addr.is_unspecified or addr == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"{text!r} is not a unicast address")
    return addr


def _is_address(text: str) -> bool:
    try:
        parse_address(text)
    except ValueError:
        return False
    return True


def is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def prefixlen(netmask: str, version: int = 4) -> int:
    """'255.255.255.0' or '24' -> 24. A mask with holes or a hostmask is refused."""
    bits = 32 if version == 4 else 128
    if netmask.isascii() and netmask.isdigit():
        if not 0 < int(netmask) <= bits:
            raise ValueError(f"bad prefix length {netmask!r}")
        return int(netmask)
    try:
        if version != 4:
            raise ValueError
        inverted = ~int(ipaddress.IPv4Address(netmask)) & 0xFFFFFFFF
    except ValueError:
        raise ValueError(f"bad netmask {netmask!r}") from None
    if inverted & (inverted + 1) or inverted == 0xFFFFFFFF:  # ones must be contiguous from the top
        raise ValueError(f"bad netmask {netmask!r}")
    return 32 - inverted.bit_length()


def classful_prefixlen(address: str) -> int:
    """What the kernel assumes for a static address without a netmask: class A, B or C."""
    first = int(ipaddress.IPv4Address(address)) >> 24
    return 8 if first < 128 else 16 if first < 192 else 24


def parse_mtu(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 68 <= int(text) <= 65535):
        raise ValueError(f"bad mtu {text!r} (68-65535)")
    return int(text)


# BOOTIF: 01- (the ARP type, Ethernet) optional, separators as each loader writes them
# (pxelinux 01-aa-bb-..., GRUB 01-aa:bb:...).
_BOOTIF = re.compile(r"(?:01-)?([0-9a-fA-F]{2}(?:[-:][0-9a-fA-F]{2}){5})")
_MAC = re.compile(r"[0-9a-fA-F]{2}([-:])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}")


def _unicast_mac(text: str) -> str | None:
    mac = text.replace("-", ":").lower()
    return None if int(mac[:2], 16) & 1 else mac


def parse_mac(text: str) -> str:
    """aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff -> lowercase with colons; unicast only."""
    mac = _unicast_mac(text) if _MAC.fullmatch(text) else None
    if mac is None:
        raise ValueError(f"bad MAC address {text!r} (unicast, six octets)")
    return mac


def split_fields(value: str) -> list[str]:
    """Split on ':' except inside [...], where an IPv6 address keeps its colons."""
    fields: list[str] = []
    current: list[str] = []
    inside = False
    for ch in value:
        if ch == ":" and not inside:
            fields.append("".join(current))
            current = []
            continue
        if ch == "[":
            inside = True
        elif ch == "]":
            inside = False
        current.append(ch)
    fields.append("".join(current))
    return fields


def _strip_brackets(text: str) -> str:
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


# -- ipconf= -------------------------------------------------------------------------


def parse_ipconf(value: str) -> IpConf:
    parts = value.split(":")
    if len(parts) == 2 and parts[1] == "dhcp" and parts[0]:
        return IpConf(device=_ifname(parts[0]), dhcp=True)
    if len(parts) != 5 or not parts[0] or not parts[1]:
        raise ValueError("expected dev:ip:netmask:broadcast:gateway or dev:dhcp")
    device, address, netmask, broadcast, gateway = parts
    _ifname(device)
    for text in (address, gateway):
        if text and not isinstance(parse_address(text), ipaddress.IPv4Address):
            raise ValueError(f"bad address {text!r}")
    if broadcast and not is_ipv4(broadcast):
        raise ValueError(f"bad broadcast address {broadcast!r}")
    if netmask:
        prefixlen(netmask)
    return IpConf(device, False, address, netmask, broadcast, gateway)


# -- ip= -----------------------------------------------------------------------------

# The kernel's and dracut's autoconf words -> what this image does (and a note when that
# differs): DHCP servers answer BOOTP clients, and nothing here speaks RARP.
_METHODS = {
    "dhcp": "dhcp", "on": "dhcp", "any": "dhcp", "single-dhcp": "dhcp",
    "bootp": "dhcp", "rarp": "dhcp", "both": "dhcp",
    "dhcp6": "dhcp6", "auto6": "auto6", "ibft": "ibft",
    "off": "off", "none": "off", "static": "static",
}  # fmt: skip
_DONE_AS_DHCP = ("bootp", "rarp", "both")


def _methods(text: str) -> list[tuple[str, str, str]]:
    """(method, note, client_id) for each method of a comma list (dracut's dhcp,dhcp6), or
    the kernel's dhcp,CLIENT-ID-TYPE,CLIENT-ID-VALUE."""
    items = text.split(",")
    if len(items) == 3 and items[0] == "dhcp" and items[1].isascii() and items[1].isdigit():
        if int(items[1]) > 255 or not items[2]:
            raise ValueError(f"bad DHCP client id {text!r}")
        return [("dhcp", "", f"{int(items[1])},{items[2]}")]
    out = []
    for item in items:
        if item not in _METHODS:
            raise ValueError(f"unknown autoconf method {item!r}")
        note = f"{item}: done with DHCP (a DHCP server answers BOOTP; RARP is not supported)"
        out.append((_METHODS[item], note if item in _DONE_AS_DHCP else "", ""))
    return out


def _mtu_and_mac(fields: list[str]) -> tuple[int | None, str]:
    """dracut's [:[mtu][:macaddr]], the MAC in one field (dashes) or split on its colons."""
    mtu = parse_mtu(fields[0]) if fields and fields[0] else None
    rest = fields[1:]
    if not rest or rest == [""]:
        return mtu, ""
    if len(rest) in (1, 6):
        return mtu, parse_mac(":".join(rest))
    raise ValueError("expected mtu:macaddr after the method")


def _tail(fields: list[str]) -> tuple[int | None, str, tuple[str, ...], str]:
    """What follows the autoconf method: the kernel's dns0:dns1:ntp0, dracut's dns1:dns2 or
    dracut's mtu:macaddr. Told apart by content: an address is never a bare number or a MAC."""
    if len(fields) <= 3 and all(not f or _is_address(f) for f in fields):
        dns = tuple(_strip_brackets(f) for f in fields[:2] if f)
        ntp = fields[2] if len(fields) == 3 else ""
        return None, "", dns, _strip_brackets(ntp)
    if fields[0] and not (fields[0].isascii() and fields[0].isdigit()):
        raise ValueError(f"bad field {fields[0]!r} after the method (dns0:dns1:ntp0 or mtu:macaddr)")
    mtu, mac = _mtu_and_mac(fields)
    return mtu, mac, (), ""


def _client(text: str) -> tuple[str, str, int]:
    """The client field: address, the prefix length written as client/NN, the IP version."""
    address, slash, prefix = text.partition("/")
    addr = parse_address(address)
    if slash:
        prefixlen(prefix, addr.version)
    return str(addr), prefix, addr.version


def _hostname(text: str) -> str:
    if len(text) > 64 or not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError(f"bad hostname {text!r}")
    return text


def _short_form(parts: list[str]) -> list[KernelIp]:
    """dev:method[:mtu[:macaddr]] (dracut), dev:method (kernel-style shorthand)."""
    device = _ifname(parts[0]) if parts[0] else ""
    if not parts[1]:
        raise ValueError("expected dhcp, dev:method or client:server:gw:netmask:host:dev:method")
    mtu, mac = _mtu_and_mac(parts[2:])
    out = []
    for method, note, client_id in _methods(parts[1]):
        if method == "static":
            raise ValueError("static needs the client address: client::gw:netmask::dev:none")
        out.append(KernelIp(device, method, mtu=mtu, macaddr=mac, client_id=client_id, note=note))
    return out


def _long_form(parts: list[str]) -> list[KernelIp]:
    """client:server:gw:netmask:hostname:device:autoconf[:tail], trailing fields optional."""
    client, server, gw, mask, host, dev, autoconf = (parts + [""] * 7)[:7]
    address, cidr, version = _client(client) if client else ("", "", 4)
    if server:
        parse_address(server.partition("/")[0])  # dracut's peer may carry /NN
    if gw and parse_address(gw).version != version:
        raise ValueError(f"gateway {gw!r} is not of the client's IP version")
    if mask and cidr and prefixlen(mask, version) != int(cidr):
        raise ValueError(f"netmask {mask!r} and {client!r} disagree")
    if mask:
        prefixlen(mask, version)
    if version == 6 and not (mask or cidr):
        raise ValueError("an IPv6 address needs a prefix length")
    mtu, mac, dns, ntp = _tail(parts[7:]) if len(parts) > 7 else (None, "", (), "")
    base = KernelIp(
        _ifname(dev) if dev else "", "", address, _strip_brackets(gw), mask or cidr,
        _hostname(host) if host else "", server, mtu, mac, dns, ntp,
    )  # fmt: skip
    if not autoconf:  # the kernel: an address and no method is a static configuration
        return [replace(base, method="static" if address else "dhcp")]
    out = []
    for method, note, client_id in _methods(autoconf):
        if method == "static" and not address:
            raise ValueError("static needs the client address")
        # off/none with an address: configure it, without autoconfiguration
        static = method in ("off", "static") and address
        out.append(replace(base, method="static" if static else method, client_id=client_id, note=note))
    return out


# A first field that is meant as an address (and is then checked as one), not a device name.
_ADDRESS_LIKE = re.compile(r"[0-9.]+(/.*)?|\[.*")


def parse_ip(value: str) -> list[KernelIp]:
    """One ip= word: one configuration, or one per method of dracut's dhcp,dhcp6 list.

    A bare word is a method (ip=dhcp; so ip=10.0.2.15 alone is refused, as dracut does);
    DEV:METHOD[:MTU[:MAC]] is dracut's short form, told by a first field that is no
    address; otherwise the kernel's field list (an empty client asks for autoconf)."""
    parts = split_fields(value)
    if not value:
        raise ValueError("expected dhcp, dev:method or client:server:gw:netmask:host:dev:method")
    if len(parts) == 1 and value.startswith("["):
        return _long_form(parts)  # an unclosed [ took the rest of the word: says "bad address"
    if len(parts) == 1:
        if _ADDRESS_LIKE.fullmatch(value):
            raise ValueError(f"a lone value is a method; a static address: {value}::GW:NETMASK::DEV:none")
        return _short_form(["", value])
    if (parts[0] and not _ADDRESS_LIKE.fullmatch(parts[0])) or (not parts[0] and len(parts) == 2):
        return _short_form(parts)
    return _long_form(parts)


# -- nameserver=, BOOTIF=, vlan=, bond= ------------------------------------------------


def parse_nameserver(value: str) -> str:
    try:
        addr = ipaddress.ip_address(_strip_brackets(value))
    except ValueError:
        raise ValueError("expected an IPv4 or IPv6 address") from None
    if addr.is_multicast or addr.is_unspecified:
        raise ValueError("expected a unicast address")
    return str(addr)


def parse_bootif(value: str) -> str:
    """BOOTIF=01-aa-bb-cc-dd-ee-ff, or a plain MAC. A multicast result is refused: it is
    what a BOOTIF one octet short (01-aa-bb-cc-dd-ee) would read as, and no NIC has one."""
    m = _BOOTIF.fullmatch(value)  # fullmatch: a quoted word may end in a newline
    mac = _unicast_mac(m.group(1)) if m else None
    if mac is None:
        raise ValueError("expected 01-aa-bb-cc-dd-ee-ff")
    return mac


_VLAN_NAME = (re.compile(r"vlan0*(\d{1,4})"), re.compile(r".+\.0*(\d{1,4})"))


def vlan_id_of(name: str) -> int:
    """dracut's four schemes: vlan0005, vlan5, eth0.0005, eth0.5. Decimal: the zero-padded
    names are the kernel's VLAN_NAME_TYPE_PLUS_VID ("vlan%.4i"), so vlan0010 is VLAN 10."""
    for pattern in _VLAN_NAME:
        m = pattern.fullmatch(name)
        if m and 1 <= int(m.group(1)) <= 4094:
            return int(m.group(1))
    raise ValueError(f"no VLAN id (1-4094) in the name {name!r}: use vlan5, vlan0005, eth0.5 or eth0.0005")


def parse_vlan(value: str) -> Vlan:
    """vlan=NAME:PARENT; also vlan=PARENT.ID alone, whose parent is in its name."""
    parts = value.split(":")
    if len(parts) == 1 and "." in value:
        parts = [value, value.rpartition(".")[0]]
    if len(parts) != 2:
        raise ValueError("expected vlanname:parent, e.g. eth0.5:eth0 or vlan5:bond0")
    name, parent = _ifname(parts[0], "VLAN"), _ifname(parts[1], "parent interface")
    if name == parent:
        raise ValueError("a VLAN cannot be its own parent")
    return Vlan(name, parent, vlan_id_of(name))


BOND_MODES = (
    "balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb",
)  # fmt: skip
DEFAULT_BOND_NAME = "bond0"
DEFAULT_BOND_SLAVES: tuple[str, ...] = ("eth0", "eth1")
DEFAULT_BOND_OPTIONS: tuple[tuple[str, str], ...] = (("mode", "balance-rr"),)


def _bond_options(text: str) -> tuple[tuple[str, str], ...]:
    """mode=active-backup,miimon=100; a multi-valued option (arp_ip_target) uses ';'."""
    options: list[tuple[str, str]] = []
    for item in text.split(","):
        key, eq, val = item.partition("=")
        if not (eq and val and re.fullmatch(r"[a-z][a-z0-9_]*", key)):
            raise ValueError(f"bad bonding option {item!r} (key=value)")
        if key in dict(options):
            raise ValueError(f"bonding option {key} given twice")
        numeric = val.isascii() and val.isdigit() and int(val) < len(BOND_MODES)  # mode=1 is active-backup
        if key == "mode" and val not in BOND_MODES and not numeric:
            raise ValueError(f"unknown bonding mode {val!r}")
        options.append((key, val))
    return tuple(options)


def parse_bond(value: str | None) -> Bond:
    """bond=NAME[:SLAVES[:OPTIONS[:MTU]]]; empty fields and a bare `bond` take dracut's
    defaults: bond0 of eth0,eth1 with mode=balance-rr."""
    name, slaves, options = DEFAULT_BOND_NAME, DEFAULT_BOND_SLAVES, DEFAULT_BOND_OPTIONS
    mtu = None
    if value:
        parts = value.split(":")
        if len(parts) > 4:
            raise ValueError("expected bondname[:slaves[:options[:mtu]]]")
        name = _ifname(parts[0], "bond") if parts[0] else name
        if len(parts) > 1 and parts[1]:
            slaves = tuple(_ifname(s, "slave") for s in parts[1].split(",") if s)
            if len(set(slaves)) != len(slaves) or not slaves:
                raise ValueError(f"bad slave list {parts[1]!r}")
        if len(parts) > 2 and parts[2]:
            options = _bond_options(parts[2])
        mtu = parse_mtu(parts[3]) if len(parts) > 3 and parts[3] else None
    if name in slaves:
        raise ValueError(f"{name} cannot be its own slave")
    return Bond(name, slaves, options, mtu)
