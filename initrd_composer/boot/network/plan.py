"""The network plan: what to create, bring up and configure, in order, from the command
line's network words and the machine's interfaces.

Pure: the interfaces come in as data (`read_interfaces` reads them from an injected /sys);
the executing part carries the steps out. Nothing here is fatal: a word naming a missing
interface, a bond without slaves, a BOOTIF no NIC has are reported in `problems` and the
plan falls back to DHCP, on every interface with a carrier at once, the first lease winning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TypeAlias
from urllib.parse import urlsplit

from initrd_composer.boot.cmdline import BootConfig
from initrd_composer.boot.network.words import IpConf, KernelIp, Vlan, classful_prefixlen, prefixlen

ARPHRD_ETHER = "1"  # /sys/class/net/*/type of Ethernet (and of bonds and VLANs on it)
AUTOCONF = ("dhcp", "dhcp6", "auto6", "ibft")


@dataclass(frozen=True)
class Interface:
    """One network interface as /sys shows it; kind "physical" has a device behind it,
    "virtual" (a bond the bonding module made, a bridge, ...) has not."""

    name: str
    mac: str
    carrier: bool
    kind: str = "physical"


# -- the steps, in the order a plan lists them ----------------------------------------


@dataclass(frozen=True)
class CreateBond:
    """Create the bond, set its options in this order (mode first), then enslave the
    slaves, each taken down first (the bonding driver refuses an up slave)."""

    name: str
    slaves: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    op: str = field(default="create_bond", init=False)


@dataclass(frozen=True)
class CreateVlan:
    name: str
    parent: str
    vlan_id: int
    op: str = field(default="create_vlan", init=False)


@dataclass(frozen=True)
class LinkUp:
    """Set the MAC (while down) and the MTU, then bring the link up."""

    name: str
    mtu: int | None = None
    macaddr: str = ""
    op: str = field(default="link_up", init=False)


@dataclass(frozen=True)
class Dhcp:
    """Autoconfigure one interface: dhcp (IPv4), dhcp6, auto6 (SLAAC) or ibft (the
    firmware's iSCSI boot table). `request`: the address to ask the DHCP server for."""

    interface: str
    method: str = "dhcp"
    hostname: str = ""
    request: str = ""
    client_id: str = ""
    op: str = field(default="dhcp", init=False)


@dataclass(frozen=True)
class DhcpRace:
    """DHCP on every candidate at once; the first lease wins, the others are stopped."""

    candidates: tuple[str, ...]
    method: str = "dhcp"
    hostname: str = ""
    client_id: str = ""
    op: str = field(default="dhcp_race", init=False)


@dataclass(frozen=True)
class Static:
    interface: str
    address: str
    prefixlen: int
    gateway: str = ""  # only on the first static step that has one: the default route
    broadcast: str = ""
    hostname: str = ""
    dns: tuple[str, ...] = ()
    op: str = field(default="static", init=False)


Step: TypeAlias = CreateBond | CreateVlan | LinkUp | Dhcp | DhcpRace | Static


@dataclass(frozen=True)
class Ping:
    """ping= N times: the NFS or HTTP server, else the static gateway; "" means the
    router the lease names (known only once configured)."""

    target: str
    count: int


@dataclass(frozen=True)
class NetworkPlan:
    steps: tuple[Step, ...] = ()
    nameservers: tuple[str, ...] = ()  # nameserver= and the ip= words' DNS fields, in order
    ntp_servers: tuple[str, ...] = ()
    ping: Ping | None = None
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


# -- the inventory ---------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:  # carrier of a link that is down reads EINVAL
        return None


def read_interfaces(sys_root: str = "/sys") -> tuple[Interface, ...]:
    """Ethernet interfaces under sys_root/class/net, by name. lo and other link types
    (type != 1) are left out, and so is Wi-Fi (type 1 too): nothing here can associate.
    The carrier is only known for a link that is up: read this after bringing links up."""
    base = os.path.join(sys_root, "class", "net")
    names = sorted(os.listdir(base)) if os.path.isdir(base) else []
    out = []
    for name in names:
        entry = os.path.join(base, name)
        if name == "lo" or _read(os.path.join(entry, "type")) != ARPHRD_ETHER:
            continue
        if os.path.exists(os.path.join(entry, "wireless")) or os.path.exists(os.path.join(entry, "phy80211")):
            continue
        kind = "physical" if os.path.exists(os.path.join(entry, "device")) else "virtual"
        mac = (_read(os.path.join(entry, "address")) or "").lower()
        out.append(Interface(name, mac, _read(os.path.join(entry, "carrier")) == "1", kind))
    return tuple(out)


# -- what the words ask for ----------------------------------------------------------


@dataclass(frozen=True)
class _Want:
    """One ipconf= or ip= configuration, in one shape."""

    label: str  # how problems and notes name it
    device: str
    method: str  # dhcp, dhcp6, auto6, ibft, static, off
    address: str = ""
    netmask: str = ""
    gateway: str = ""
    broadcast: str = ""
    hostname: str = ""
    dns: tuple[str, ...] = ()
    mtu: int | None = None
    macaddr: str = ""
    client_id: str = ""

    @property
    def family(self) -> int:
        """Per interface, one IPv4 and one IPv6 configuration (ip=eth0:dhcp ip=eth0:dhcp6)."""
        return 6 if self.method in ("dhcp6", "auto6") or ":" in self.address else 4


def _from_ipconf(c: IpConf) -> _Want:
    if c.dhcp:
        return _Want(f"ipconf={c.device}:dhcp", c.device, "dhcp")
    label = f"ipconf={c.device}:{c.address}:{c.netmask}:{c.broadcast}:{c.gateway}"
    return _Want(label, c.device, "static", c.address, c.netmask, c.gateway, c.broadcast)


def _from_ip(k: KernelIp) -> _Want:
    what = f"{k.method} {k.address}" if k.address else k.method
    label = f"ip= ({what} on {k.device})" if k.device else f"ip= ({what})"
    return _Want(
        label, k.device, k.method, k.address, k.netmask, k.gateway, "", k.hostname, k.dns, k.mtu, k.macaddr,
        k.client_id,
    )  # fmt: skip


def _config_step(w: _Want, device: str, notes: list[str]) -> Dhcp | Static | None:
    if w.method == "off":
        return None  # link up, no address
    if w.method in AUTOCONF:
        request = w.address if w.method == "dhcp" else ""
        return Dhcp(device, w.method, w.hostname, request, w.client_id)
    version = 6 if ":" in w.address else 4
    if w.netmask:
        plen = prefixlen(w.netmask, version)
    else:
        plen = classful_prefixlen(w.address)
        notes.append(f"{w.label}: no netmask; /{plen} from the address's class, as the kernel does")
    return Static(device, w.address, plen, w.gateway, w.broadcast, w.hostname, w.dns)


def _describe(step: Dhcp | Static | DhcpRace) -> str:
    if isinstance(step, DhcpRace):
        return f"{step.method} on {', '.join(step.candidates)} at once, the first lease wins"
    if isinstance(step, Dhcp):
        return f"{step.method} on {step.interface}"
    return f"{step.address}/{step.prefixlen} on {step.interface}"


def _bootif_interface(cfg: BootConfig, interfaces: Sequence[Interface], problems: list[str]) -> str:
    if cfg.bootif is None:
        return ""
    found = sorted((i for i in interfaces if i.mac == cfg.bootif), key=lambda i: i.kind != "physical")
    if not found:
        problems.append(f"BOOTIF={cfg.bootif}: no interface has this MAC (is its driver in the image?)")
        return ""
    return found[0].name


def _url_host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:  # url=http://[x passes cmdline's check; the HTTP stage reports it
        return ""


def _ping(cfg: BootConfig, configs: Sequence[Step]) -> Ping | None:
    if not cfg.ping:
        return None
    nfs = cfg.nfsmount or cfg.netfsmount
    target = nfs.partition(":")[0] if nfs else _url_host(cfg.url) if cfg.url else ""
    if not target:
        target = next((s.gateway for s in configs if isinstance(s, Static) and s.gateway), "")
    return Ping(target, cfg.ping)


def network_wanted(cfg: BootConfig) -> bool:
    """Whether a stage needs the network: PXE, NFS or HTTP media, an NFS capture_to=, or any network word but
    a lone ip=off, including a mistyped one (its plan falls back to DHCP)."""
    if cfg.pxe or cfg.nfsmount or cfg.netfsmount or cfg.url or cfg.ipconf or cfg.vlans or cfg.bonds:
        return True
    if cfg.capture_to and not cfg.capture_to.startswith(("LABEL=", "UUID=", "/dev/")):
        return True  # an NFS capture target
    deviceless = [k for k in cfg.ip if not k.device]
    if any(k.device for k in cfg.ip) or (deviceless and deviceless[-1].method != "off"):
        return True
    return any(p.startswith(("ip=", "ipconf=", "vlan=", "bond=")) for p in cfg.problems)


# -- the plan ----------------------------------------------------------------------------


def _bonds(
    cfg: BootConfig, physical: set[str], problems: list[str]
) -> tuple[list[CreateBond], dict[str, str], dict[str, int]]:
    """The bonds to create, each with the slaves that are here; slave -> bond; bond MTUs."""
    bonds: list[CreateBond] = []
    slave_of: dict[str, str] = {}
    mtu_of: dict[str, int] = {}
    for bond in {b.name: b for b in cfg.bonds}.values():  # a name given twice: the last wins
        if bond.name in physical:
            problems.append(f"bond {bond.name}: a network card has that name; not created")
            continue
        present = [s for s in bond.slaves if s in physical and s not in slave_of]
        for s in bond.slaves:
            if s not in present:
                why = f"already a slave of {slave_of[s]}" if s in slave_of else "no such interface"
                problems.append(f"bond {bond.name}: slave {s}: {why}")
        if not present:
            problems.append(f"bond {bond.name}: none of its slaves is here; not created")
            continue
        slave_of.update(dict.fromkeys(present, bond.name))
        bonds.append(CreateBond(bond.name, tuple(present), bond.options))
        if bond.mtu:
            mtu_of[bond.name] = bond.mtu
    return bonds, slave_of, mtu_of


def _vlans(
    cfg: BootConfig, names: set[str], physical: set[str], slave_of: dict[str, str], *, bonds: Sequence[str],
    problems: list[str],
) -> list[CreateVlan]:
    """The VLANs to create: on an interface that is here (not a slave) or on a bond of this plan."""
    vlans: list[CreateVlan] = []
    wanted: dict[str, Vlan] = {v.name: v for v in cfg.vlans}  # a name given twice: the last wins
    for v in wanted.values():
        why = ""
        if v.name in physical:
            why = "a network card has that name"
        elif v.parent in slave_of:
            why = f"its parent {v.parent} is a slave of {slave_of[v.parent]}: put the VLAN on the bond"
        elif v.parent in wanted:
            why = "a VLAN on a VLAN is not supported"
        elif v.parent not in names and v.parent not in bonds:
            why = f"no parent interface {v.parent}"
        elif any((c.parent, c.vlan_id) == (v.parent, v.vlan_id) for c in vlans):
            why = f"VLAN {v.vlan_id} on {v.parent} is already created"
        if why:
            problems.append(f"vlan {v.name}: {why}; not created")
        else:
            vlans.append(CreateVlan(v.name, v.parent, v.vlan_id))
    return vlans


def plan_network(cfg: BootConfig, interfaces: Sequence[Interface]) -> NetworkPlan:
    """The plan for these interfaces. Rules, in order:

    - bonds, then VLANs (on an interface or a bond of this plan) are created when their
      slaves / parent exist; each missing one is a problem;
    - ipconf= first, then each ip= word: an explicit device is configured as asked (per
      device one IPv4 and one IPv6 configuration; a later word replaces an earlier one);
    - a device-less word (ip=dhcp, ip=::::::dhcp, a device-less static) and every word whose
      device is missing go to the default targets: the VLAN and bond interfaces this plan
      creates, else BOOTIF's interface, else every free interface with a carrier (DHCP
      race; a static address takes the first); the same DHCP when no word names a device;
    - a device-less ip=off (or none) as the last device-less word turns that default off.
    """
    problems: list[str] = []
    notes: list[str] = []
    by_name = {i.name: i for i in interfaces}
    physical = {i.name for i in interfaces if i.kind == "physical"}

    bonds, slave_of, mtu_of = _bonds(cfg, physical, problems)
    bond_names = [b.name for b in bonds]
    vlans = _vlans(cfg, set(by_name), physical, slave_of, bonds=bond_names, problems=problems)

    known = (set(by_name) - set(slave_of)) | set(bond_names) | {v.name for v in vlans}
    wants = ([_from_ipconf(cfg.ipconf)] if cfg.ipconf else []) + [_from_ip(k) for k in cfg.ip]
    notes.extend(f"{_from_ip(k).label}: {k.note}" for k in cfg.ip if k.note)
    explicit: dict[tuple[str, int], _Want] = {}
    deviceless: _Want | None = None
    missing: list[tuple[str, str]] = []  # (label, why) of words that fall back to the default
    for w in wants:
        if not w.device:
            if deviceless is not None:
                problems.append(f"{deviceless.label}: a later ip= has no device either; the last one wins")
            deviceless = w
        elif w.device not in known:
            slave = slave_of.get(w.device)
            why = f"{w.device} is a slave of {slave}" if slave else f"no interface {w.device}"
            missing.append((w.label, why))
        else:
            old = explicit.get((w.device, w.family))
            if old is not None:
                problems.append(f"{old.label}: {w.device} configured again by {w.label}; the last one wins")
            explicit[(w.device, w.family)] = w

    configs: list[Dhcp | Static | DhcpRace] = []
    link: dict[str, _Want] = {}  # the word whose mtu/macaddr a link gets
    for w in explicit.values():
        step = _config_step(w, w.device, notes)
        configs.extend([step] if step is not None else [])
        if w.mtu or w.macaddr:
            link[w.device] = w
    used = {w.device for w in explicit.values()}

    default: _Want | None = None
    if deviceless is not None and deviceless.method != "off":
        default = deviceless
    elif missing or (deviceless is None and not explicit):
        default = _Want("no ip= or ipconf= for an interface that is here", "", "dhcp")
    elif deviceless is not None and not explicit:
        notes.append(f"{deviceless.label}: no network is configured")
        if cfg.pxe or cfg.nfsmount or cfg.netfsmount or cfg.url:
            problems.append(f"{deviceless.label}: the network stays down, but the restore data is on it")

    bootif = _bootif_interface(cfg, interfaces, problems)
    default_step: Dhcp | Static | DhcpRace | None = None
    targets: list[str] = []
    if default is not None:
        vlan_parents = {v.parent for v in vlans}
        tops = [v.name for v in vlans] + [b for b in bond_names if b not in vlan_parents]
        free = [i for i in interfaces if i.kind == "physical" and i.name not in {*slave_of, *used}]
        targets = [t for t in tops if t not in used]
        if not targets and bootif and bootif in known and bootif not in used:
            targets = [bootif]
        if not targets:
            targets = [i.name for i in free if i.carrier]
        if not targets and free:
            targets = [i.name for i in free]
            notes.append("no interface shows a carrier yet: DHCP on every one")
        if not targets:
            problems.append(f"{default.label}: no interface left to configure")
        elif default.method in AUTOCONF and len(targets) > 1:
            default_step = DhcpRace(tuple(targets), default.method, default.hostname, default.client_id)
        else:
            if len(targets) > 1:
                notes.append(f"{default.label}: no device named; {targets[0]}, the first candidate, gets it")
            targets = targets[:1]
            default_step = _config_step(default, targets[0], notes)
        if default_step is not None:
            configs.append(default_step)
        for t in targets if default.mtu else ():
            link.setdefault(t, replace(default, macaddr=""))
        if default.macaddr and len(targets) == 1:
            link.setdefault(targets[0], default)
        elif default.macaddr:
            notes.append(f"{default.label}: macaddr {default.macaddr} not set: no single interface for it")
    fallback = _describe(default_step) if default_step is not None else "nothing"
    problems.extend(f"{label}: {why}; instead: {fallback}" for label, why in missing)

    configs = _one_default_route(configs, notes)
    needed = used | set(targets) | set(bond_names) | {v.name for v in vlans} | {v.parent for v in vlans}
    order = dict.fromkeys([*(i.name for i in interfaces), *bond_names, *(v.name for v in vlans)])
    up = [_link_up(n, link.get(n), mtu_of.get(n)) for n in order if n in needed]  # lower links first
    nameservers = dict.fromkeys([*cfg.nameservers, *(d for w in wants for d in w.dns)])
    ntp = dict.fromkeys(k.ntp for k in cfg.ip if k.ntp)
    return NetworkPlan(
        steps=(*bonds, *vlans, *up, *configs),
        nameservers=tuple(nameservers),
        ntp_servers=tuple(ntp),
        ping=_ping(cfg, configs),
        problems=tuple(problems),
        notes=tuple(notes),
    )


def _one_default_route(
    configs: list[Dhcp | Static | DhcpRace], notes: list[str]
) -> list[Dhcp | Static | DhcpRace]:
    """One default route: the first static gateway; later ones are dropped, said in a note."""
    out: list[Dhcp | Static | DhcpRace] = []
    first = ""
    for step in configs:
        if isinstance(step, Static) and step.gateway and first:
            notes.append(f"{step.interface}: gateway {step.gateway} not used; default route via {first}")
            out.append(replace(step, gateway=""))
            continue
        if isinstance(step, Static) and step.gateway:
            first = step.gateway
        out.append(step)
    return out


def _link_up(name: str, want: _Want | None, bond_mtu: int | None) -> LinkUp:
    """A bond's slaves come up with the bond; an ip= word's mtu wins over bond='s."""
    if want is None:
        return LinkUp(name, bond_mtu)
    return LinkUp(name, want.mtu or bond_mtu, want.macaddr)
