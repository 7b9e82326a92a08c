"""The network stage: carry a NetworkPlan out and report it (the hwreport `network` section).

Order: every physical link up (carrier can only be read on a link that is up), a bounded
wait for carrier, then the plan for the interfaces as they are now, then its steps in
order. A step that fails is reported and the next one is tried: a rescue system keeps
whatever network it can get. Nothing here waits without a bound.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from initrd_composer.boot.cmdline import BootConfig
from initrd_composer.boot.commands import BUSYBOX, CommandResult, run_command
from initrd_composer.boot.network.addresses import RESOLV_CONF, Addressing, configure, from_lease
from initrd_composer.boot.network.dhcp import LEASE_DIR, UDHCPC_SCRIPT, dhcp_race
from initrd_composer.boot.network.plan import (
    CreateBond,
    CreateVlan,
    Dhcp,
    DhcpRace,
    Interface,
    LinkUp,
    NetworkPlan,
    Static,
    plan_network,
    read_interfaces,
)


@dataclass(frozen=True)
class StageOptions:
    sys_root: str = "/sys"
    proc_root: str = "/proc"
    busybox: str = BUSYBOX
    script: str = UDHCPC_SCRIPT
    lease_dir: str = LEASE_DIR
    resolv_path: str = RESOLV_CONF
    carrier_wait_s: float = 10.0
    dhcp_timeout_s: float = 30.0
    run: Callable[[Sequence[str]], CommandResult] = run_command
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass
class _Outcome:
    configured: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)  # bonds and VLANs made
    errors: list[str] = field(default_factory=list)


def wait_for_carrier(opts: StageOptions) -> tuple[Interface, ...]:
    """Bring every physical link up, then wait until one has a carrier (and a moment for
    the others), at most carrier_wait_s: an unplugged port must not hold the boot."""
    for iface in read_interfaces(opts.sys_root):
        if iface.kind == "physical":
            opts.run([opts.busybox, "ip", "link", "set", "dev", iface.name, "up"])
    start = opts.clock()
    first_carrier: float | None = None
    while True:
        now = opts.clock()
        interfaces = read_interfaces(opts.sys_root)
        physical = [i for i in interfaces if i.kind == "physical"]
        if physical and all(i.carrier for i in physical):
            return interfaces
        if first_carrier is None and any(i.carrier for i in physical):
            first_carrier = now
        if now - start >= opts.carrier_wait_s or (first_carrier is not None and now - first_carrier >= 1.0):
            return interfaces
        opts.sleep(0.1)


def _mac_of(name: str, interfaces: Sequence[Interface], sys_root: str) -> str:
    """From the inventory, or for a bond or VLAN made since, from sysfs."""
    known = next((i.mac for i in interfaces if i.name == name), "")
    return known or next(iter(_sysfs_words(os.path.join(sys_root, "class/net", name, "address"))), "")


def _record(out: _Outcome, a: Addressing, *, method: str, interfaces: Sequence[Interface], seconds: float,
            sys_root: str) -> None:
    name = a.interface
    out.configured.append({
        "interface": name, "mac": _mac_of(name, interfaces, sys_root), "driver": _driver(name, sys_root),
        "method": method, "address": a.cidr, "gateway": a.gateway, "dns": list(a.dns),
        "seconds": round(seconds, 2),
    })


def _driver(name: str, sys_root: str) -> str:
    link = os.path.join(sys_root, "class/net", name, "device/driver")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else ""


def _is_bond(name: str, sys_root: str) -> bool:
    return os.path.isdir(os.path.join(sys_root, "class/net", name, "bonding"))


def _sysfs_words(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return []


def _bond_report(name: str, sys_root: str) -> dict[str, Any]:
    """What the kernel says the bond is now (mode "active-backup 1", the enslaved links)."""
    bonding = os.path.join(sys_root, "class/net", name, "bonding")
    mode = _sysfs_words(os.path.join(bonding, "mode"))
    return {"name": name, "kind": "bond", "mode": mode[0] if mode else "",
            "slaves": _sysfs_words(os.path.join(bonding, "slaves"))}


def _vlan_report(step: CreateVlan, proc_root: str) -> dict[str, Any]:
    """The tag as the kernel has it (/proc/net/vlan/NAME: "NAME  VID: 5  REORDER_HDR: 1 ..."),
    None when that file cannot be read."""
    words = _sysfs_words(os.path.join(proc_root, "net/vlan", step.name))
    vid = words[words.index("VID:") + 1] if "VID:" in words[:-1] else ""
    return {"name": step.name, "kind": "vlan", "parent": step.parent,
            "vlan_id": int(vid) if vid.isdigit() else None}


def _bond_argvs(step: CreateBond, busybox: str) -> list[list[str]]:
    ip = [busybox, "ip"]
    # Options go through sysfs before slaves join (the mode cannot change afterwards);
    # `ip link add ... type bond` makes the kernel load bonding through request_module.
    argvs = [[*ip, "link", "add", "name", step.name, "type", "bond"]]
    argvs += [[*ip, "link", "set", "dev", slave, "down"] for slave in step.slaves]
    argvs += [[*ip, "link", "set", "dev", slave, "master", step.name] for slave in step.slaves]
    argvs += [[*ip, "link", "set", "dev", slave, "up"] for slave in step.slaves]
    return argvs


def _bond_options(step: CreateBond, sys_root: str) -> list[tuple[str, str]]:
    """(sysfs file, value) pairs; `mode` first, as the kernel requires."""
    ordered = sorted(step.options, key=lambda kv: kv[0] != "mode")
    return [(os.path.join(sys_root, "class/net", step.name, "bonding", k), v) for k, v in ordered]


def _vlan_argv(step: CreateVlan, busybox: str) -> list[str]:
    return [busybox, "ip", "link", "add", "link", step.parent, "name", step.name, "type", "vlan",
            "id", str(step.vlan_id)]


def _run_all(argvs: Sequence[Sequence[str]], opts: StageOptions) -> str:
    for argv in argvs:
        done = opts.run(argv)
        if not done.ok:
            return done.describe()
    return ""


def _write_sysfs(pairs: Sequence[tuple[str, str]]) -> str:
    for path, value in pairs:
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            return f"{path} = {value}: {exc.strerror or exc}"
    return ""


def _carry_out(plan: NetworkPlan, interfaces: Sequence[Interface], opts: StageOptions) -> _Outcome:
    out = _Outcome()
    for step in plan.steps:
        started = opts.clock()
        if isinstance(step, CreateBond):
            add, *enslave = _bond_argvs(step, opts.busybox)
            # Loading bonding makes bond0 by itself (max_bonds=1): `ip link add` then says
            # "File exists", and the bond the module made is the one to configure.
            err = "" if _is_bond(step.name, opts.sys_root) else _run_all([add], opts)
            if err and _is_bond(step.name, opts.sys_root):
                err = ""
            err = err or _write_sysfs(_bond_options(step, opts.sys_root)) or _run_all(enslave, opts)
            if err:
                out.errors.append(f"bond {step.name}: {err}")
            else:
                out.links.append(_bond_report(step.name, opts.sys_root))
        elif isinstance(step, CreateVlan):
            if err := _run_all([_vlan_argv(step, opts.busybox)], opts):
                out.errors.append(f"vlan {step.name}: {err}")
            else:
                out.links.append(_vlan_report(step, opts.proc_root))
        elif isinstance(step, LinkUp):
            link = [opts.busybox, "ip", "link", "set", "dev", step.name]
            argvs = [[*link, "address", step.macaddr]] if step.macaddr else []
            argvs += [[*link, "mtu", str(step.mtu)]] if step.mtu else []
            argvs.append([*link, "up"])
            if err := _run_all(argvs, opts):
                out.errors.append(f"link {step.name}: {err}")
        elif isinstance(step, Static):
            a = Addressing(step.interface, f"{step.address}/{step.prefixlen}", step.gateway,
                           dns=step.dns or plan.nameservers)
            done = configure(a, busybox=opts.busybox, resolv_path=opts.resolv_path, run=opts.run)
            if done.ok:
                _record(out, a, method="static", interfaces=interfaces, seconds=opts.clock() - started,
                        sys_root=opts.sys_root)
            else:
                out.errors.append(f"{step.interface}: {done.error}")
        elif isinstance(step, (Dhcp, DhcpRace)):
            _dhcp(step, plan, interfaces=interfaces, opts=opts, out=out, started=started)
    return out


def _dhcp(step: Dhcp | DhcpRace, plan: NetworkPlan, *, interfaces: Sequence[Interface], opts: StageOptions,
          out: _Outcome, started: float) -> None:
    candidates = step.candidates if isinstance(step, DhcpRace) else (step.interface,)
    if step.method != "dhcp":
        out.errors.append(f"{', '.join(candidates)}: {step.method} is not in this image (DHCPv4 only)")
        return
    race = dhcp_race(candidates, timeout_s=opts.dhcp_timeout_s, lease_dir=opts.lease_dir,
                     busybox=opts.busybox, script=opts.script)
    if race.lease is None:
        why = "; ".join(f"{name}: {reason}" for name, reason in race.failed) or "no interface"
        out.errors.append(f"DHCP on {', '.join(candidates)} got no lease ({why})")
        return
    a = from_lease(race.lease)
    if plan.nameservers:  # nameserver= on the command line beats what the server says
        a = Addressing(a.interface, a.cidr, a.gateway, a.mtu, plan.nameservers, a.search)
    done = configure(a, busybox=opts.busybox, resolv_path=opts.resolv_path, run=opts.run)
    if done.ok:
        seconds = opts.clock() - started
        _record(out, a, method="dhcp", interfaces=interfaces, seconds=seconds, sys_root=opts.sys_root)
    else:
        out.errors.append(f"{a.interface}: {done.error}")


def ping_until_answered(target: str, count: int, opts: StageOptions) -> dict[str, Any]:
    """ping=N: up to N one-second pings until the server answers (MondoRescue's wait for
    a slow switch port or server)."""
    for attempt in range(1, count + 1):
        if opts.run([opts.busybox, "ping", "-c", "1", "-W", "1", target]).ok:
            return {"target": target, "ok": True, "tries": attempt}
    return {"target": target, "ok": False, "tries": count}


def run_network(cfg: BootConfig, opts: StageOptions | None = None) -> dict[str, Any]:
    """The `network` section: ok (an interface is configured), configured interfaces, the
    plan's problems and notes, step errors, seconds."""
    opts = opts or StageOptions()
    start = opts.clock()
    interfaces = wait_for_carrier(opts)
    plan = plan_network(cfg, interfaces)
    out = _carry_out(plan, interfaces, opts)
    ping = None
    if plan.ping is not None and out.configured:
        target = plan.ping.target or out.configured[0]["gateway"]
        if target:
            ping = ping_until_answered(target, plan.ping.count, opts)
    return {
        "ok": bool(out.configured),
        "interfaces": out.configured,
        "links": out.links,
        "problems": list(plan.problems),
        "notes": list(plan.notes),
        "errors": out.errors,
        "carrier": sorted(i.name for i in interfaces if i.carrier),
        "ping": ping,
        "seconds": round(opts.clock() - start, 2),
    }
