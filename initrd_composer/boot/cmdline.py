"""The kernel command line as /init understands it (whole tokens, never substrings)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

MODES = ("nuke", "interactive", "compare", "expert", "probe")
FLAGS = ("pxe", "iso_mode", "obdr")
# Words the kernel or other tools own: known, so not reported as unknown.
KERNEL_WORDS = (
    "console", "root", "ro", "rw", "quiet", "debug", "loglevel", "panic", "init", "rdinit", "initrd",
    "BOOT_IMAGE", "earlyprintk", "noapic", "nomodeset", "acpi", "apic", "mem", "nokaslr", "vga",
    "net.ifnames", "biosdevname", "module_blacklist", "modprobe.blacklist", "efi", "nosmp", "maxcpus",
    "mitigations", "ipv6.disable", "audit", "selinux", "apparmor", "lockdown", "systemd.unit", "rootwait",
)


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
    """ip= in the kernel's/dracut's forms: ip=dhcp, ip=dev:dhcp, ip=client:server:gw:mask:host:dev:proto."""

    device: str
    method: str  # dhcp, static, off, ...
    address: str = ""
    gateway: str = ""
    netmask: str = ""
    hostname: str = ""


@dataclass(frozen=True)
class BootConfig:
    mode: str | None = None
    ipconf: IpConf | None = None
    ip: KernelIp | None = None
    bootif: str | None = None  # MAC, from pxelinux IPAPPEND 2 (01-aa-bb-...)
    ping: int | None = None
    pxe: bool = False
    iso_mode: bool = False
    obdr: bool = False
    prefix: str | None = None
    netfsmount: str | None = None
    nfsmount: str | None = None
    url: str | None = None
    tapedev: str | None = None
    denymods: tuple[str, ...] = ()
    forcemods: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())


def split_cmdline(text: str) -> list[str]:
    """Split like the kernel: whitespace separates, double quotes group (and are dropped)."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    started = False
    for ch in text.strip():
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        words.append("".join(current))
    return words


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _parse_ipconf(value: str) -> IpConf:
    parts = value.split(":")
    if len(parts) == 2 and parts[1] == "dhcp" and parts[0]:
        return IpConf(device=parts[0], dhcp=True)
    if len(parts) == 5 and parts[0] and all(_ipv4(p) for p in parts[1:] if p) and _ipv4(parts[1]):
        return IpConf(parts[0], False, parts[1], parts[2], parts[3], parts[4])
    raise ValueError("expected dev:ip:netmask:broadcast:gateway or dev:dhcp")


_IP_METHODS = ("dhcp", "on", "any", "dhcp6", "auto6", "off", "none", "static", "both")


def _ip_method(word: str) -> str:
    return "dhcp" if word in ("on", "any") else word


def _parse_ip(value: str) -> KernelIp:
    if value in _IP_METHODS:
        return KernelIp(device="", method=_ip_method(value))
    parts = value.split(":")
    if len(parts) == 2 and parts[1] in _IP_METHODS:
        return KernelIp(device=parts[0], method=_ip_method(parts[1]))
    # The kernel's long form; an empty client (ip=:::::eth0:dhcp) asks for autoconfiguration.
    if len(parts) >= 4 and (not parts[0] or _ipv4(parts[0])):
        client, _server, gw, mask = parts[:4]
        host = parts[4] if len(parts) > 4 else ""
        dev = parts[5] if len(parts) > 5 else ""
        proto = parts[6] if len(parts) > 6 and parts[6] else ("static" if client else "dhcp")
        if (gw and not _ipv4(gw)) or (mask and not _ipv4(mask)):
            raise ValueError("bad gateway or netmask")
        if proto not in _IP_METHODS:
            raise ValueError(f"unknown autoconf method {proto!r}")
        if proto in ("off", "none", "static") and client:
            proto = "static"  # the kernel's off/none with an address: configure it, no autoconf
        elif proto == "static":
            raise ValueError("a static address needs the client address")
        return KernelIp(dev, _ip_method(proto), client, gw, mask, host)
    raise ValueError("expected dhcp, dev:dhcp or client:server:gw:netmask:host:dev:proto")


_MAC = re.compile(r"^(?:01-)?([0-9a-fA-F]{2}(?:[-:][0-9a-fA-F]{2}){5})$")


def parse_cmdline(text: str) -> BootConfig:
    """Parse /proc/cmdline. Unknown words are collected; malformed values are reported in
    `problems` and ignored: a typo on the command line must never stop a restore."""
    values: dict[str, object] = {}
    unknown: list[str] = []
    problems: list[str] = []
    for word in split_cmdline(text):
        key, eq, value = word.partition("=")
        try:
            if not eq and key in MODES:
                if "mode" in values and values["mode"] != key:
                    problems.append(f"{key}: mode already {values['mode']}; the last one wins")
                values["mode"] = key
            elif not eq and key in FLAGS:
                values[key] = True
            elif key == "ipconf" and eq:
                values["ipconf"] = _parse_ipconf(value)
            elif key == "ip" and eq:
                values["ip"] = _parse_ip(value)
            elif key == "BOOTIF" and eq:
                m = _MAC.match(value)
                if not m:
                    raise ValueError("expected 01-aa-bb-cc-dd-ee-ff")
                mac = m.group(1).replace("-", ":").lower()
                if int(mac[:2], 16) & 1:  # multicast: a truncated 01-aa-bb-cc-dd-ee, not a NIC
                    raise ValueError("expected 01-aa-bb-cc-dd-ee-ff")
                values["bootif"] = mac
            elif key == "ping" and eq:
                if not (value.isascii() and value.isdigit()):
                    raise ValueError("expected a count")
                values["ping"] = int(value)
            elif key in ("netfsmount", "nfsmount") and eq:
                server, colon, path = value.partition(":")
                if not (server and colon and path.startswith("/")):
                    raise ValueError("expected server:/path")
                values[key] = value
            elif key == "url" and eq:
                if not re.match(r"^(https?|ftp)://[^/\s]+", value):
                    raise ValueError("expected http://host/path")
                values["url"] = value
            elif key == "tapedev" and eq:
                if not value.startswith("/dev/"):
                    raise ValueError("expected /dev/nstN")
                values["tapedev"] = value
            elif key == "prefix" and eq:
                if not value or "/" in value:
                    raise ValueError("expected a name without '/'")
                values["prefix"] = value
            elif key in ("denymods", "forcemods") and eq:
                values[key] = tuple(m.strip().replace("-", "_") for m in value.split(",") if m.strip())
            elif key in KERNEL_WORDS or "." in key:
                continue  # the kernel's own parameters, or module.param=value
            else:
                unknown.append(word)
        except ValueError as exc:
            problems.append(f"{word}: {exc}; ignored")
    return BootConfig(**values, unknown=tuple(unknown), problems=tuple(problems))  # type: ignore[arg-type]
