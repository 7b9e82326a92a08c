"""The PXE tree: a directory ready to be the root of a TFTP (or HTTP) server.

    vmlinuz, initrd.img        the kernel and the initrd, byte for byte
    pxelinux.0, ldlinux.c32,   BIOS: pxelinux and its menu (syslinux's own files)
      menu.c32, lib*.c32
    pxelinux.cfg/default       BIOS menu; 01-aa-bb-cc-dd-ee-ff per machine (--mac)
    boot.ipxe                  iPXE script (iPXE ROMs, or chained from undionly/snponly)
    bootx64.efi                UEFI: Microsoft-signed shim; it fetches grubx64.efi from
    grubx64.efi, mmx64.efi     its own TFTP directory (Debian-signed grubnetx64, MokManager)
    grub/grub.cfg              UEFI menu: grubnetx64's built-in prefix is (tftp,SERVER)/grub
    dnsmasq-pxe.conf           proxy-DHCP + TFTP snippet for an existing dnsmasq
    .initrd-composer-pxe.json  written last: what is in the tree (see _previous_files)

Every entry boots `console=... MODE pxe [prefix=NAME] [ipconf=...] [nfsmount=S:/P |
url=...]` (the MondoRescue words /init reads), and each loader adds the MAC of the NIC it
booted from as BOOTIF=, so /init brings up that NIC: pxelinux through IPAPPEND 2, iPXE
and GRUB from their own variables.  Kernel and initrd are named relative to the loader
(pxelinux's directory, the script's URL, GRUB's $cmdpath), so the tree also works below
a shared TFTP root, apart from GRUB's config, which grubnetx64 reads from /grub.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from initrd_composer.atomic_output import atomic_directory
from initrd_composer.boot.cmdline import parse_cmdline
from initrd_composer.errors import ComposeError, UsageError
from initrd_composer.media.boot_menus import (
    SYSLINUX_MENU_FILES,
    MenuSpec,
    check_words,
    grub_cfg,
    ipxe_script,
    mac_config_name,
    syslinux_cfg,
)
from initrd_composer.media.loader_files import LoaderFiles
from initrd_composer.media.payload import BootPayload, sha256_file

KERNEL = "vmlinuz"
INITRD = "initrd.img"
IPXE_SCRIPT = "boot.ipxe"
GRUB_CFG = "grub/grub.cfg"
DNSMASQ_CONF = "dnsmasq-pxe.conf"
MARKER = ".initrd-composer-pxe.json"
BIOS_FILES = ("pxelinux.0", "ldlinux.c32", *SYSLINUX_MENU_FILES)
# Name in the tree -> LoaderFiles name.  shim asks the TFTP server for "grubx64.efi"
# (and "mmx64.efi") in the directory it was itself loaded from.
EFI_FILES = {"bootx64.efi": "shimx64.efi", "grubx64.efi": "grubnetx64.efi", "mmx64.efi": "mmx64.efi"}
PXE_LOADERS = (*BIOS_FILES, *EFI_FILES.values())
# The booting NIC's MAC in each loader's own syntax; /init's BOOTIF= takes both forms.
IPXE_BOOTIF = "BOOTIF=01-${netX/mac:hexhyp}"
GRUB_BOOTIF = "BOOTIF=01-${net_default_mac}"

_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _cmdline_word(key: str, value: str, option: str, hint: str) -> str:
    """`key=value`, checked with /init's own parser so the tree never writes a word the
    boot side would ignore."""
    word = f"{key}={value}"
    check_words((word,), option)
    parsed = parse_cmdline(word)
    if parsed.problems or parsed.unknown:
        raise UsageError(f"bad {option} {value!r}", hint)
    return word


def ipconf_word(value: str, option: str = "--ipconf") -> str:
    example = "eth0:192.168.1.20:255.255.255.0:192.168.1.255:192.168.1.1"
    hint = f"write DEV:dhcp or DEV:IP:NETMASK:BROADCAST:GATEWAY, e.g. {example}"
    return _cmdline_word("ipconf", value, option, hint)


@dataclass(frozen=True)
class MacEntry:
    """One --mac: pxelinux's file name for it and its own ipconf (None: the tree's)."""

    config_name: str
    ipconf: str | None = None


@dataclass(frozen=True)
class PxeOptions:
    nfs: str | None = None  # server:/path, as nfsmount=
    url: str | None = None
    prefix: str | None = None
    ipconf: str | None = None
    macs: tuple[MacEntry, ...] = ()
    server: str | None = None  # TFTP server address, for the dnsmasq snippet

    def __post_init__(self) -> None:
        if self.nfs is not None and self.url is not None:
            raise UsageError("--nfs and --url both given", "the restore data comes from one place: pick one")
        names = [m.config_name for m in self.macs]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise UsageError(f"--mac {dup[3:].replace('-', ':')} given twice", "give each machine once")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PxeOptions:
        return cls(
            nfs=parse_nfs(args.nfs) if args.nfs is not None else None,
            url=parse_url(args.url) if args.url is not None else None,
            prefix=parse_prefix(args.prefix) if args.prefix is not None else None,
            ipconf=ipconf_word(args.ipconf).removeprefix("ipconf=") if args.ipconf is not None else None,
            macs=tuple(parse_mac(m) for m in args.mac),
            server=parse_server(args.server) if args.server is not None else None,
        )

    def words(self, ipconf: str | None = None) -> tuple[str, ...]:
        """The PXE words of the command line (a machine's own ipconf replaces the tree's)."""
        words = ["pxe"]
        if self.prefix is not None:
            words.append(f"prefix={self.prefix}")
        if (ipconf or self.ipconf) is not None:
            words.append(f"ipconf={ipconf or self.ipconf}")
        if self.nfs is not None:
            words.append(f"nfsmount={self.nfs}")
        if self.url is not None:
            words.append(f"url={self.url}")
        return tuple(words)


def parse_nfs(text: str) -> str:
    return _cmdline_word(
        "nfsmount", text, "--nfs", "write SERVER:/PATH with an absolute path, e.g. 192.168.1.5:/srv/rescue"
    ).removeprefix("nfsmount=")


def parse_url(text: str) -> str:
    hint = "give http://HOST/PATH or https://HOST/PATH"
    return _cmdline_word("url", text, "--url", hint).removeprefix("url=")


def parse_prefix(text: str) -> str:
    if not _PREFIX.match(text):
        raise UsageError(f"bad --prefix {text!r}", "give a plain name such as rescue (image NAME-1.iso)")
    return text


def parse_mac(text: str) -> MacEntry:
    """MAC or MAC=IPCONF (aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff)."""
    mac, eq, ipconf = text.partition("=")
    if not _MAC.match(mac.strip()):
        raise UsageError(f"bad --mac {text!r}", "write MAC or MAC=IPCONF, e.g. aa:bb:cc:dd:ee:ff=eth0:dhcp")
    own = ipconf_word(ipconf, "--mac").removeprefix("ipconf=") if eq else None
    return MacEntry(mac_config_name(mac), own)


def parse_server(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise UsageError(
            f"bad --server {text!r}", "give the IPv4 address of the TFTP server, e.g. 192.168.1.5"
        ) from None


@dataclass(frozen=True)
class PxeReport:
    path: Path
    files: tuple[str, ...]  # relative to path, sorted
    cmdline: str  # the default entry's, before the loader adds BOOTIF=
    dnsmasq_conf: Path


def dnsmasq_snippet(tree: Path, server: str | None) -> str:
    """proxy-DHCP + TFTP for dnsmasq beside the network's own DHCP server.

    The DHCP server keeps handing out addresses; this dnsmasq only answers PXE clients
    with a boot file.  Firmware PXE gets a loader by client architecture (option 93),
    iPXE (user class "iPXE") the script directly, so an iPXE ROM skips pxelinux.
    Tried against a second dnsmasq as the DHCP server: iPXE boots through the proxy;
    UEFI gets shim and GRUB, which then stops (GRUB 2.06 reads only the DHCP ACK).
    """
    where = f",{server}" if server else ""  # pxe-service: basename[,server]
    boot_server = f",,{server}" if server else ""  # dhcp-boot: file[,servername[,address]]
    lines = [
        "# initrd-composer PXE tree: proxy-DHCP + TFTP (written by compose-initrd pxe)",
        "# Use: dnsmasq --conf-file=THIS_FILE, or copy into /etc/dnsmasq.d/ (see docs/pxe.md).",
        "enable-tftp",
        f"tftp-root={tree}",
    ]
    if server:
        lines += ["# Answer PXE clients of this subnet, leave addresses to the existing DHCP server.",
                  f"dhcp-range={server},proxy"]
    else:
        lines += ["# Set the subnet to answer PXE clients on (compose-initrd pxe --server ADDR fills it in):",
                  "#dhcp-range=192.0.2.0,proxy"]
    lines += [
        "dhcp-userclass=set:ipxe,iPXE",
        f'pxe-service=tag:!ipxe,x86PC,"initrd-composer rescue (BIOS)",pxelinux{where}',
        "# UEFI (client-arch 7 or 9, both x86-64): shim loads, but Debian 12's GRUB 2.06 ignores",
        "# proxy-DHCP answers and finds no server for its grub.cfg: for UEFI machines let the DHCP",
        "# server itself send bootx64.efi (the dhcp-boot lines at the end; docs/pxe.md).",
        f'pxe-service=tag:!ipxe,X86-64_EFI,"initrd-composer rescue (UEFI)",bootx64.efi{where}',
        f'pxe-service=tag:!ipxe,BC_EFI,"initrd-composer rescue (UEFI)",bootx64.efi{where}',
        f"dhcp-boot=tag:ipxe,{IPXE_SCRIPT}{boot_server}",
        "# When this dnsmasq is itself the DHCP server (no proxy), use instead:",
        "#dhcp-match=set:efi64,option:client-arch,7",
        "#dhcp-match=set:efi64,option:client-arch,9",
        f"#dhcp-boot=tag:!ipxe,tag:!efi64,pxelinux.0{boot_server}",
        f"#dhcp-boot=tag:!ipxe,tag:efi64,bootx64.efi{boot_server}",
    ]
    return "\n".join(lines) + "\n"


def pxe_menu(spec: MenuSpec, opts: PxeOptions, ipconf: str | None = None) -> MenuSpec:
    """The menu with the PXE words after the mode, before the user's --append words."""
    return replace(spec, extra=(*opts.words(ipconf), *spec.extra))


def _loader_configs(spec: MenuSpec, opts: PxeOptions) -> dict[str, str]:
    """Relative path -> text of every loader config."""
    menu = pxe_menu(spec, opts)
    files = {
        "pxelinux.cfg/default": syslinux_cfg(menu, KERNEL, INITRD, ipappend=True),
        IPXE_SCRIPT: ipxe_script(menu, KERNEL, INITRD, loader_words=IPXE_BOOTIF),
        # $cmdpath: the TFTP directory shim and GRUB came from, where the kernel lies too.
        GRUB_CFG: grub_cfg(menu, f"$cmdpath/{KERNEL}", f"$cmdpath/{INITRD}", loader_words=GRUB_BOOTIF),
    }
    for mac in opts.macs:
        own = pxe_menu(spec, opts, mac.ipconf)
        files[f"pxelinux.cfg/{mac.config_name}"] = syslinux_cfg(own, KERNEL, INITRD, ipappend=True)
    return files


def write_pxe_tree(
    out: Path, payload: BootPayload, menu: MenuSpec, loaders: LoaderFiles, opts: PxeOptions
) -> PxeReport:
    """Write the tree at `out`, all or nothing: built in a hidden sibling directory and
    renamed into place.  Missing loader files and an `out` that is not ours fail first."""
    out = Path(out).absolute()
    found = loaders.require(*PXE_LOADERS)
    _check_target(out)
    texts = {**_loader_configs(menu, opts), DNSMASQ_CONF: dnsmasq_snippet(out, opts.server)}
    with atomic_directory(out, replace=True) as tmp:
        files = _fill(tmp, payload, found, texts)
    return PxeReport(out, files, pxe_menu(menu, opts).cmdline(menu.default), out / DNSMASQ_CONF)


def _fill(tmp: Path, payload: BootPayload, found: dict[str, Path], texts: dict[str, str]) -> tuple[str, ...]:
    """Copy and write everything into `tmp`; the marker last.  Returns the files written."""
    shutil.copyfile(payload.vmlinuz, tmp / KERNEL)
    shutil.copyfile(payload.initrd, tmp / INITRD)
    if sha256_file(tmp / INITRD) != payload.initrd_sha256:
        raise ComposeError(f"{payload.initrd} changed while it was copied", "run the command again")
    for name in BIOS_FILES:
        shutil.copyfile(found[name], tmp / name)
    for name, loader in EFI_FILES.items():
        shutil.copyfile(found[loader], tmp / name)
    for rel, text in texts.items():
        (tmp / rel).parent.mkdir(mode=0o755, exist_ok=True)
        (tmp / rel).write_text(text)
    files = tuple(sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()))
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    marker = {
        "written_by": "compose-initrd pxe",
        "kernel": payload.kernel_version,
        "initrd_sha256": payload.initrd_sha256,
        "files": list(files),
    }
    (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    (tmp / MARKER).chmod(0o644)
    return files


def _previous_files(out: Path) -> set[str] | None:
    """The files a previous `compose-initrd pxe` put in `out`, or None if it is not ours."""
    try:
        listed = json.loads((out / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {str(f) for f in listed} | {MARKER}


def _check_target(out: Path) -> None:
    """`out` may be new, an empty directory, or a tree we wrote holding nothing else: a
    directory with other files may be someone's TFTP root, which is never replaced."""
    if not out.parent.is_dir():
        raise ComposeError(f"cannot create {out}: no directory {out.parent}", "create it, or another -o")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise ComposeError(f"{out} exists and is not a directory", "give -o a new directory")
    present = {str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir()}
    if not present:
        return
    ours = _previous_files(out)
    if ours is None:
        raise ComposeError(
            f"{out} is not empty and not a tree written by compose-initrd pxe",
            "give -o a new or empty directory (a shared TFTP root: write the tree into a subdirectory)",
        )
    extra = sorted(present - ours)
    if extra:
        raise ComposeError(
            f"{out} holds files compose-initrd did not write ({', '.join(extra[:3])}"
            + (", ..." if len(extra) > 3 else "") + ")",
            "move them out of the tree, or give -o another directory",
        )
