"""The kernel command line as /init understands it (whole tokens, never substrings)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from initrd_composer.boot.network.words import (
    Bond,
    IpConf,
    KernelIp,
    Vlan,
    parse_bond,
    parse_bootif,
    parse_ip,
    parse_ipconf,
    parse_nameserver,
    parse_vlan,
)

# The word dataclasses live with their parsers; callers take them from here too.
__all__ = [
    "FLAGS", "KERNEL_WORDS", "MODES", "Bond", "BootConfig", "IpConf", "KernelIp", "Vlan",
    "parse_cmdline", "split_cmdline", "split_nfs_spec",
]  # fmt: skip

MODES = ("nuke", "interactive", "compare", "expert", "probe", "capture")
RESTORE_THEN = ("reboot", "poweroff", "shell")
FLAGS = ("pxe", "iso_mode", "obdr", "noresize", "nopart")
# Words the kernel or other tools own: known, so not reported as unknown.
KERNEL_WORDS = (
    "console", "root", "ro", "rw", "quiet", "debug", "loglevel", "panic", "init", "rdinit", "initrd",
    "BOOT_IMAGE", "earlyprintk", "noapic", "nomodeset", "acpi", "apic", "mem", "nokaslr", "vga",
    "net.ifnames", "biosdevname", "module_blacklist", "modprobe.blacklist", "efi", "nosmp", "maxcpus",
    "mitigations", "ipv6.disable", "audit", "selinux", "apparmor", "lockdown", "systemd.unit", "rootwait",
    "no_timer_check", "clocksource", "tsc", "nowatchdog",
)


@dataclass(frozen=True)
class BootConfig:
    mode: str | None = None
    ipconf: IpConf | None = None
    ip: tuple[KernelIp, ...] = ()  # every ip= configuration, in command-line order
    nameservers: tuple[str, ...] = ()
    vlans: tuple[Vlan, ...] = ()
    bonds: tuple[Bond, ...] = ()
    bootif: str | None = None  # MAC, from pxelinux IPAPPEND 2 (01-aa-bb-...)
    ping: int | None = None
    pxe: bool = False
    iso_mode: bool = False
    obdr: bool = False
    noresize: bool = False  # MondoRescue's word: the restore keeps the saved partition sizes
    nopart: bool = False  # MondoRescue's word: restore into the partitions the disks have
    prefix: str | None = None
    netfsmount: str | None = None
    nfsmount: str | None = None
    url: str | None = None
    tapedev: str | None = None
    media_timeout: int | None = None  # seconds a source may wait for a device or server
    restore_then: str | None = None  # what follows a restore: reboot (None), poweroff or shell
    restore_set: str | None = None  # the set's directory below the medium's root, when not found alone
    capture_to: str | None = None  # capture mode's output: server:/path, LABEL=x, UUID=x or /dev/X
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


def split_nfs_spec(spec: str) -> tuple[str, str]:
    """`server:/path` (server a name, IPv4 or `[IPv6]`) as (server, path); ValueError if not."""
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        if not (host and bracket and rest.startswith(":/") and ":" in host):
            raise ValueError("expected [IPv6]:/path")
        return host, rest[1:]
    server, colon, path = spec.partition(":")
    if not (server and colon and path.startswith("/")) or any(c in server for c in "/[] "):
        raise ValueError("expected server:/path")
    return server, path


def parse_capture_to(value: str) -> str:
    """`server:/path` (NFS), `LABEL=x`, `UUID=x` or `/dev/X`, optionally `...:/subdir` after a
    label, UUID or device; ValueError otherwise."""
    if value.startswith(("LABEL=", "UUID=", "/dev/")):
        spec = value.split(":", 1)[0]
        if spec in ("LABEL=", "UUID=", "/dev/"):
            raise ValueError("expected LABEL=name, UUID=uuid or /dev/X")
        return value
    split_nfs_spec(value)
    return value


def parse_cmdline(text: str) -> BootConfig:
    """Parse /proc/cmdline. Unknown words are collected; malformed values are reported in
    `problems` and ignored: a typo on the command line must never stop a restore."""
    values: dict[str, object] = {}
    unknown: list[str] = []
    problems: list[str] = []
    # repeatable network words, each kept in order
    ips: list[KernelIp] = []
    nameservers: list[str] = []
    vlans: list[Vlan] = []
    bonds: list[Bond] = []
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
                ipconf = parse_ipconf(value)
                if values.get("ipconf", ipconf) != ipconf:
                    problems.append(f"{word}: ipconf= given before; the last one wins")
                values["ipconf"] = ipconf
            elif key == "ip" and eq:
                ips.extend(parse_ip(value))
            elif key == "nameserver" and eq:
                nameservers.append(parse_nameserver(value))
            elif key == "vlan" and eq:
                vlans.append(parse_vlan(value))
            elif key == "bond":  # a bare `bond` is dracut's bond0 of eth0,eth1
                bonds.append(parse_bond(value if eq else None))
            elif key == "BOOTIF" and eq:
                values["bootif"] = parse_bootif(value)
            elif key == "ping" and eq:
                if not (value.isascii() and value.isdigit()):
                    raise ValueError("expected a count")
                values["ping"] = int(value)
            elif key in ("netfsmount", "nfsmount") and eq:
                split_nfs_spec(value)  # raises ValueError when malformed
                values[key] = value
            elif key == "url" and eq:
                if not re.match(r"^https?://[^/\s]+", value):
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
            elif key == "media_timeout" and eq:
                if not (value.isascii() and value.isdigit() and 0 < int(value) <= 3600):
                    raise ValueError("expected seconds, 1 to 3600")
                values["media_timeout"] = int(value)
            elif key == "restore_then" and eq:
                if value not in RESTORE_THEN:
                    raise ValueError(f"expected one of {', '.join(RESTORE_THEN)}")
                values["restore_then"] = value
            elif key == "restore_set" and eq:
                if not value or value.startswith("/") or ".." in value.split("/"):
                    raise ValueError("expected a directory below the medium's root, such as sets/web1")
                values["restore_set"] = value
            elif key == "capture_to" and eq:
                values["capture_to"] = parse_capture_to(value)
            elif key in ("denymods", "forcemods") and eq:
                values[key] = tuple(m.strip().replace("-", "_") for m in value.split(",") if m.strip())
            elif key in KERNEL_WORDS or "." in key:
                continue  # the kernel's own parameters, or module.param=value
            else:
                unknown.append(word)
        except ValueError as exc:
            problems.append(f"{word}: {exc}; ignored")
    return BootConfig(
        **values,  # type: ignore[arg-type]
        ip=tuple(ips),
        nameservers=tuple(nameservers),
        vlans=tuple(vlans),
        bonds=tuple(bonds),
        unknown=tuple(unknown),
        problems=tuple(problems),
    )
