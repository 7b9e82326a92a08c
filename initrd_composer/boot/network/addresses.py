"""Give an interface its address, route and DNS: busybox's `ip` (netlink) and resolv.conf.

The argv lists are built by pure functions, so what /init would do is testable without
root; `configure` runs them in order and stops at the first failure, reporting which
command failed and why.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from initrd_composer.boot.commands import BUSYBOX, CommandResult, run_command
from initrd_composer.boot.network.dhcp import Lease

RESOLV_CONF = "/etc/resolv.conf"


@dataclass(frozen=True)
class Addressing:
    interface: str
    cidr: str  # "192.0.2.15/24"
    gateway: str = ""
    mtu: int | None = None
    dns: tuple[str, ...] = ()
    search: tuple[str, ...] = ()


def from_lease(lease: Lease) -> Addressing:
    search = (lease.domain,) if lease.domain else ()
    return Addressing(lease.interface, lease.cidr, lease.router, lease.mtu, lease.dns, search)


def address_argvs(a: Addressing, busybox: str = BUSYBOX) -> list[list[str]]:
    """Flush what the link had (a retry must not stack addresses), set the MTU, add the
    address, bring it up, then the default route when the gateway is on that subnet."""
    ip = [busybox, "ip"]
    argvs = [[*ip, "addr", "flush", "dev", a.interface]]
    if a.mtu:
        argvs.append([*ip, "link", "set", "dev", a.interface, "mtu", str(a.mtu)])
    network = ipaddress.IPv4Interface(a.cidr).network
    argvs += [
        [*ip, "addr", "add", a.cidr, "broadcast", str(network.broadcast_address), "dev", a.interface],
        [*ip, "link", "set", "dev", a.interface, "up"],
    ]
    if a.gateway:
        # A gateway off the subnet (some DHCP servers hand one out) needs an on-link route first.
        if ipaddress.IPv4Address(a.gateway) not in network:
            argvs.append([*ip, "route", "add", a.gateway, "dev", a.interface])
        argvs.append([*ip, "route", "replace", "default", "via", a.gateway, "dev", a.interface])
    return argvs


def resolv_conf(nameservers: Sequence[str], search: Sequence[str] = ()) -> str:
    """glibc reads at most three nameservers; musl and busybox the same: keep the first three."""
    lines = [f"search {' '.join(search)}"] if search else []
    lines += [f"nameserver {ns}" for ns in list(dict.fromkeys(nameservers))[:3]]
    return "\n".join(lines) + "\n" if lines else ""


@dataclass(frozen=True)
class ConfigureResult:
    ok: bool
    error: str = ""  # the failed command and its message


def configure(
    a: Addressing,
    *,
    busybox: str = BUSYBOX,
    resolv_path: str = RESOLV_CONF,
    run: Callable[[Sequence[str]], CommandResult] = run_command,
) -> ConfigureResult:
    for argv in address_argvs(a, busybox):
        done = run(argv)
        if not done.ok:
            return ConfigureResult(False, done.describe())
    text = resolv_conf(a.dns, a.search)
    if text:
        try:
            tmp = f"{resolv_path}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, resolv_path)
        except OSError as exc:
            return ConfigureResult(False, f"cannot write {resolv_path}: {exc.strerror or exc}")
    return ConfigureResult(True)
