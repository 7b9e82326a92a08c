"""Boot menus of every medium: isolinux/pxelinux, GRUB (CD and network) and iPXE.

One MenuSpec says what the user can pick (the restore modes), which entry boots when
nobody answers, after how long, and where the console is.  Each writer turns it into one
boot loader's language, so the kernel command line of an entry is the same everywhere:

    console=tty0 console=ttyS0,115200n8 MODE [EXTRA...]

The serial console comes last so that /dev/console (what /init writes to and where the
shell of `expert` runs) is the serial port a headless server or a VM is driven through;
the kernel prints to both, and /init mirrors its lines to the screen (boot/console.py).
Every loader also draws its menu on the serial port, so IPMI serial-over-LAN works from
the first prompt on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from initrd_composer.boot.cmdline import MODES  # the words /init reads: one list for both sides
from initrd_composer.errors import ComposeError, UsageError

# Each entry says what the mode does, so no menu promises what it cannot do.
TITLES = {
    "nuke": "nuke: erase the disks and restore automatically, verified",
    "interactive": "interactive: choose disks, sizes and filesystems, then restore",
    "compare": "compare: report what differs from the backup, writing nothing",
    "expert": "expert: a shell with every driver and the restore steps as commands",
    "probe": "probe: report the hardware this image drives, then power off",
    "capture": "capture: write a restore set of this machine to capture_to=",
}
# What a menu offers: `capture` only with --append capture_to= (it needs the set's target).
MENU_MODES = tuple(m for m in MODES if m != "capture")
DEFAULT_MODE = "interactive"  # never nuke: a forgotten CD must not wipe a machine
DEFAULT_TIMEOUT_S = 10

_SERIAL = re.compile(r"^ttyS(\d)(?:,(\d+)(n8)?)?$")
# Words the boot loaders would take as syntax: keep the command line plain.
_UNSAFE = re.compile(r"[\s\"'`;${}\\#]")


@dataclass(frozen=True)
class SerialConsole:
    unit: int = 0
    speed: int = 115200

    @property
    def kernel_arg(self) -> str:
        return f"console=ttyS{self.unit},{self.speed}n8"


def parse_serial(text: str) -> SerialConsole | None:
    """`ttyS0`, `ttyS1,57600`, `ttyS0,115200n8` or `none`."""
    if text == "none":
        return None
    m = _SERIAL.match(text)
    if m is None:
        raise UsageError(f"bad serial console {text!r}", "use ttySN[,SPEED], e.g. ttyS0,115200, or none")
    return SerialConsole(int(m.group(1)), int(m.group(2) or 115200))


def check_words(words: tuple[str, ...], what: str) -> tuple[str, ...]:
    for word in words:
        if not word or _UNSAFE.search(word):
            raise UsageError(
                f"{what}: {word!r} cannot go on a kernel command line",
                "give plain words such as ipconf=eth0:dhcp, without spaces or quotes",
            )
    return words


@dataclass(frozen=True)
class MenuSpec:
    """What a boot menu offers; `extra` words follow the mode on every entry."""

    default: str = DEFAULT_MODE
    timeout_s: int = DEFAULT_TIMEOUT_S
    serial: SerialConsole | None = field(default_factory=SerialConsole)
    extra: tuple[str, ...] = ()
    title: str = "initrd-composer rescue"

    def __post_init__(self) -> None:
        if self.default not in self.modes:
            need = "; capture needs --append capture_to=TARGET" if self.default == "capture" else ""
            choices = ", ".join(self.modes)
            raise UsageError(f"unknown default mode {self.default!r}", f"choose one of {choices}{need}")
        if not 0 <= self.timeout_s <= 3600:
            raise UsageError(f"menu timeout {self.timeout_s} s out of range", "give 0..3600 seconds")
        check_words(self.extra, "--append")

    def cmdline(self, mode: str) -> str:
        consoles = ["console=tty0", self.serial.kernel_arg] if self.serial else []
        return " ".join([*consoles, mode, *self.extra])

    @property
    def modes(self) -> tuple[str, ...]:
        """Default first: loaders that show a list put it on top. `capture` only when the
        command line names where the set goes (--append capture_to=...)."""
        wanted = any(w.startswith("capture_to=") for w in self.extra)
        offered = [*MENU_MODES, *(("capture",) if wanted else ())]
        if self.default not in offered:
            return tuple(offered)
        return (self.default, *(m for m in offered if m != self.default))


# menu.c32 and the libraries it links: placed beside ldlinux.c32 on every syslinux medium.
SYSLINUX_MENU_FILES = ("menu.c32", "libutil.c32", "libcom32.c32")


def syslinux_cfg(spec: MenuSpec, kernel: str, initrd: str, *, ipappend: bool = False) -> str:
    """isolinux.cfg / pxelinux.cfg/default: menu.c32's text menu on screen and serial.

    menu.c32 draws with ANSI sequences that syslinux sends to the serial port too (a
    plain `boot:` prompt would do, but syslinux prints SAY/DISPLAY text to the screen
    only).  Without menu.c32 syslinux falls back to that prompt with the same DEFAULT.
    TIMEOUT counts tenths of a second; 0 waits forever, as `--timeout 0` means here.
    """
    # SERIAL must come first: syslinux only mirrors to the port from there on.
    lines = [f"SERIAL {spec.serial.unit} {spec.serial.speed}"] if spec.serial is not None else []
    lines += [
        f"# {spec.title}: written by initrd-composer",
        "UI menu.c32",
        f"MENU TITLE {spec.title}",
        f"DEFAULT {spec.default}",
        f"TIMEOUT {spec.timeout_s * 10}",
    ]
    for mode in spec.modes:
        lines += ["", f"LABEL {mode}", f"  MENU LABEL {TITLES[mode]}"]
        if mode == spec.default:
            lines.append("  MENU DEFAULT")
        lines += [f"  KERNEL {kernel}", f"  INITRD {initrd}", f"  APPEND {spec.cmdline(mode)}"]
        if ipappend:
            lines.append("  IPAPPEND 2")  # BOOTIF=01-mac: /init picks the NIC that booted
    return "\n".join(lines) + "\n"


def grub_cfg(spec: MenuSpec, kernel: str, initrd: str, *, loader_words: str = "") -> str:
    """grub.cfg for Debian's signed GRUB (CD image and network image alike).

    Only commands built into the signed images are used: under Secure Boot GRUB loads no
    modules from disk.  `linux` hands the kernel to shim for verification.
    `loader_words` follow the command line verbatim: GRUB syntax the caller owns, such as
    BOOTIF=01-${net_default_mac} on a network boot.
    """
    tail = f" {loader_words}" if loader_words else ""
    lines = [f"# {spec.title}: written by initrd-composer"]
    if spec.serial is not None:
        lines += [
            f"serial --unit={spec.serial.unit} --speed={spec.serial.speed}",
            "terminal_input console serial",
            "terminal_output console serial",
        ]
    lines += [f"set default={spec.default}", f"set timeout={spec.timeout_s if spec.timeout_s else -1}"]
    for mode in spec.modes:
        lines += [
            "",
            f"menuentry '{TITLES[mode]}' --id {mode} {{",
            f"    linux {kernel} {spec.cmdline(mode)}{tail}",
            f"    initrd {initrd}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def ipxe_script(spec: MenuSpec, kernel: str, initrd: str, *, loader_words: str = "") -> str:
    """An iPXE script; relative names resolve against the script's own URL (TFTP or HTTP).

    `initrd=` on the command line is what the EFI stub needs to find the initrd iPXE
    registered; BIOS kernels ignore it.  `loader_words` follow the command line verbatim
    (iPXE settings such as BOOTIF=01-${netX/mac:hexhyp}).
    """
    tail = f" {loader_words}" if loader_words else ""
    timeout_ms = spec.timeout_s * 1000
    lines = [
        "#!ipxe",
        f"# {spec.title}: written by initrd-composer",
        f"menu {spec.title}",
        *(f"item {m} {TITLES[m]}" for m in spec.modes),
        f"choose --default {spec.default} --timeout {timeout_ms} mode || goto {spec.default}",
        "goto ${mode}",
    ]
    initrd_name = initrd.rsplit("/", 1)[-1]
    for mode in spec.modes:
        lines += [
            "",
            f":{mode}",
            f"kernel {kernel} initrd={initrd_name} {spec.cmdline(mode)}{tail}",
            f"initrd {initrd}",
            "boot || shell",
        ]
    return "\n".join(lines) + "\n"


def mac_config_name(mac: str) -> str:
    """pxelinux's per-machine file name: aa:bb:.. (or aa-bb-..) -> 01-aa-bb-cc-dd-ee-ff."""
    parts = re.split(r"[:-]", mac.strip().lower())
    if len(parts) != 6 or not all(re.fullmatch(r"[0-9a-f]{2}", p) for p in parts):
        raise ComposeError(f"bad MAC address {mac!r}", "write it as aa:bb:cc:dd:ee:ff")
    return "01-" + "-".join(parts)
