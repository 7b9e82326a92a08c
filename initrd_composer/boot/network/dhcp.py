"""DHCP through busybox's udhcpc: one client per candidate interface at once, and the
first lease wins (klibc ipconfig's rule when no interface is named).

udhcpc is a maintained client that the image already carries; its event script
(skeleton: usr/lib/initrd-composer/udhcpc.script) only records each lease as KEY=VALUE
lines under `lease_dir`, so the losers of the race never hold an address. The caller
configures the winner (addresses.apply_lease).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from initrd_composer.boot.commands import BUSYBOX
from initrd_composer.boot.network.words import is_ipv4, prefixlen

UDHCPC_SCRIPT = "/usr/lib/initrd-composer/udhcpc.script"
LEASE_DIR = "/run/initrd-composer/dhcp"


@dataclass(frozen=True)
class Lease:
    interface: str
    address: str
    prefixlen: int
    router: str = ""
    dns: tuple[str, ...] = ()
    domain: str = ""
    hostname: str = ""
    mtu: int | None = None
    server: str = ""  # the DHCP server's identifier (option 54)
    next_server: str = ""  # siaddr: the TFTP/boot server
    boot_file: str = ""
    lease_s: int | None = None

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


class LeaseError(ValueError):
    pass


def parse_lease(text: str) -> Lease:
    """The script's KEY=VALUE lines; the first of a key counts (a DHCP string option with a
    newline in it cannot add or change keys)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq and key not in fields:
            fields[key] = value.strip()
    try:
        address = str(ipaddress.IPv4Address(fields.get("ip", "")))
        prefix = int(fields["mask"]) if fields.get("mask") else prefixlen(fields.get("subnet", ""))
        ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
    except (ValueError, KeyError) as exc:
        raise LeaseError(f"lease without a usable address: {exc}") from None
    return Lease(
        interface=fields.get("interface", ""),
        address=address,
        prefixlen=prefix,
        router=_first_ipv4(fields.get("router", "")),
        dns=tuple(w for w in fields.get("dns", "").split() if is_ipv4(w)),
        domain=fields.get("domain", ""),
        hostname=fields.get("hostname", ""),
        mtu=_int_or_none(fields.get("mtu", "")),
        server=fields.get("serverid", ""),
        next_server=fields.get("siaddr", ""),
        boot_file=fields.get("boot_file", ""),
        lease_s=_int_or_none(fields.get("lease", "")),
    )


def _first_ipv4(words: str) -> str:
    return next((w for w in words.split() if is_ipv4(w)), "")


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def udhcpc_argv(
    interface: str, *, discover_tries: int, pause_s: int, busybox: str = BUSYBOX, script: str = UDHCPC_SCRIPT
) -> list[str]:
    """Foreground, quit after a lease, give up after the discovers (-n): every client ends
    by itself. Ask for the options the later stages use: MTU (26), hostname (12),
    domain (15), DNS (6) and routers (3) are udhcpc's defaults plus these."""
    return [
        busybox, "udhcpc", "-f", "-q", "-n", "-i", interface, "-s", script,
        "-t", str(discover_tries), "-T", str(pause_s), "-O", "mtu", "-O", "hostname",
        "-x", "hostname:initrd-composer",
    ]


@dataclass(frozen=True)
class RaceResult:
    lease: Lease | None
    seconds: float
    tried: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]  # (interface, why) for clients that ended without a lease


Spawn = Callable[[list[str], dict[str, str]], "subprocess.Popen[bytes]"]


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - argv list, no shell
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )


def dhcp_race(
    interfaces: Sequence[str],
    *,
    timeout_s: float = 30.0,
    discover_tries: int = 4,
    pause_s: int = 2,
    lease_dir: str = LEASE_DIR,
    busybox: str = BUSYBOX,
    script: str = UDHCPC_SCRIPT,
    spawn: Spawn = _spawn,
    clock: Callable[[], float] = time.monotonic,
    poll_s: float = 0.05,
) -> RaceResult:
    """Run udhcpc on every interface at once; return the first lease (or none by
    `timeout_s`), and stop the other clients before anything is configured."""
    start = clock()
    os.makedirs(lease_dir, exist_ok=True)
    for name in interfaces:  # a lease left from an earlier try must not win this one
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(lease_dir, name))
    env = {"PATH": os.path.dirname(busybox) + ":/bin:/sbin:/usr/bin:/usr/sbin", "LEASE_DIR": lease_dir}
    clients = {
        name: spawn(udhcpc_argv(name, discover_tries=discover_tries, pause_s=pause_s, busybox=busybox,
                                script=script), env)
        for name in interfaces
    }
    failed: dict[str, str] = {}
    lease: Lease | None = None
    try:
        while clock() - start < timeout_s:
            for name, proc in clients.items():
                if name in failed:
                    continue
                exited = proc.poll() is not None  # before the read: the script ran before exit
                lease = _lease_of(name, lease_dir, failed)
                if lease is not None:
                    break
                if exited:
                    failed.setdefault(name, _why(proc))
            if lease is not None or len(failed) == len(clients):
                break
            time.sleep(poll_s)
    finally:
        for proc in clients.values():
            _stop(proc)
    for name in clients:
        if lease is None and name not in failed:
            failed[name] = f"no lease within {timeout_s:g} s"
    return RaceResult(lease, clock() - start, tuple(interfaces), tuple(sorted(failed.items())))


def _lease_of(name: str, lease_dir: str, failed: dict[str, str]) -> Lease | None:
    try:
        with open(os.path.join(lease_dir, name)) as f:
            return parse_lease(f.read())
    except FileNotFoundError:
        return None
    except (OSError, LeaseError) as exc:
        failed[name] = f"unusable lease: {exc}"
        return None


def _why(proc: subprocess.Popen[bytes]) -> str:
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    last = out.strip().splitlines()[-1:] or [f"udhcpc exited with {proc.returncode}"]
    return last[0]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()
