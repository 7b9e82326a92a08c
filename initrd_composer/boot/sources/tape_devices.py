"""SCSI devices as sysfs shows them, for the tape source: tape drives (st), their generic
nodes (sg), drives in CD-ROM emulation (sr), and the remove-and-scan that makes the kernel
see an OBDR drive again once it has left that emulation. Paths are injected (sys_root), so
the tests build fake trees.

    /sys/class/scsi_device/H:C:T:L/device/{type,vendor,model,rev,delete}
    /sys/class/scsi_tape/nstN/device  -> that device (st; nstN is the no-rewind node)
    /sys/class/scsi_generic/sgN/device -> that device (sg)
    /sys/class/block/srN/device        -> that device (sr, CD-ROM)
    /sys/class/scsi_host/hostH/scan    <- "C T L" adds the device back (ReaR writes
                                          `scsi add-single-device H C T L` to /proc/scsi/scsi)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from initrd_composer.boot.scsi_generic import SgDevice
from initrd_composer.boot.sysfs import read_attr

TAPE_NODE = re.compile(r"^nst(\d+)$")  # the no-rewind node; st0a/st0l/st0m are other modes
PDT_DISK, PDT_TAPE, PDT_CDROM = 0, 1, 5
OBDR_VENDORS = ("HP", "HPE")  # HP (now HPE) drives are the ones with the CD-ROM emulation


@dataclass(frozen=True)
class ScsiDevice:
    """One SCSI device (an H:C:T:L) and the nodes bound to it."""

    hctl: str
    type: int  # peripheral device type: 1 tape, 5 CD-ROM
    vendor: str
    model: str
    rev: str
    tape: str | None  # "nst0" when st drives it
    generic: str | None  # "sg0" when sg is loaded
    block: str | None  # "sr0" for a CD-ROM sr drives

    def label(self) -> str:
        return f"{self.hctl} {self.vendor} {self.model}".strip()

    @property
    def host(self) -> int:
        return int(self.hctl.split(":")[0])


def _bound(sys_root: str, klass: str, accept: Callable[[str], bool]) -> dict[str, str]:
    """{H:C:T:L: node name} of one class (the first name in numeric order wins)."""
    base = f"{sys_root}/class/{klass}"
    out: dict[str, str] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in sorted(names, key=_node_key):
        if not accept(name):
            continue
        target = os.path.realpath(f"{base}/{name}/device")
        out.setdefault(os.path.basename(target), name)
    return out


def _node_key(name: str) -> tuple[str, int]:
    match = re.match(r"^(\D+)(\d+)$", name)
    return (match[1], int(match[2])) if match else (name, -1)


def scsi_devices(sys_root: str = "/sys") -> list[ScsiDevice]:
    """Every SCSI device, in H:C:T:L order, with its tape, generic and block nodes."""
    base = f"{sys_root}/class/scsi_device"
    try:
        names = os.listdir(base)
    except OSError:
        return []
    tapes = _bound(sys_root, "scsi_tape", lambda n: bool(TAPE_NODE.match(n)))
    generics = _bound(sys_root, "scsi_generic", lambda n: n.startswith("sg"))
    blocks = _bound(sys_root, "block", lambda n: n.startswith("sr"))
    out = []
    for hctl in sorted(names, key=lambda h: tuple(int(p) if p.isdigit() else -1 for p in h.split(":"))):
        dev = f"{base}/{hctl}/device"
        kind = read_attr(f"{dev}/type")
        out.append(ScsiDevice(hctl, int(kind) if kind.isdigit() else -1, read_attr(f"{dev}/vendor"),
                              read_attr(f"{dev}/model"), read_attr(f"{dev}/rev"), tapes.get(hctl),
                              generics.get(hctl), blocks.get(hctl)))  # fmt: skip
    return out


def tape_nodes(sys_root: str = "/sys") -> list[str]:
    """The no-rewind tape nodes st made (nst0, nst1, ...), in number order."""
    try:
        names = os.listdir(f"{sys_root}/class/scsi_tape")
    except OSError:
        return []
    return sorted((n for n in names if TAPE_NODE.match(n)), key=_node_key)


def obdr_candidates(devices: list[ScsiDevice]) -> list[ScsiDevice]:
    """HP drives that may be in CD-ROM emulation: those showing as a CD-ROM first, then HP
    tapes (a drive already in tape mode takes the same command unchanged). Other vendors'
    page 3Eh means something else, so they are never sent it."""
    hp = [d for d in devices if d.vendor.upper() in OBDR_VENDORS and d.type in (PDT_CDROM, PDT_TAPE)]
    return [d for d in hp if d.type == PDT_CDROM] + [d for d in hp if d.type == PDT_TAPE]


def command_node(device: ScsiDevice) -> str | None:
    """The node to send SG_IO to: the generic one, else the upper driver's."""
    if device.generic:
        return device.generic
    if device.block:
        return device.block
    return device.tape


def rescan(device: ScsiDevice, sys_root: str = "/sys") -> None:
    """Remove the device and scan its address again, so the kernel asks it anew what it is.
    OSError if sysfs refuses either write."""
    _host, channel, target, lun = device.hctl.split(":")
    with open(f"{sys_root}/class/scsi_device/{device.hctl}/device/delete", "w") as f:
        f.write("1")
    with open(f"{sys_root}/class/scsi_host/host{device.host}/scan", "w") as f:
        f.write(f"{channel} {target} {lun}")


def module_loaded(name: str, sys_root: str = "/sys") -> bool:
    return os.path.isdir(f"{sys_root}/module/{name}")


def modprobe(name: str) -> str | None:
    """Load a module with the image's modprobe; None when it worked, else why not."""
    from initrd_composer.boot.commands import run_command  # noqa: PLC0415

    result = run_command(["modprobe", name], timeout_s=30)
    return None if result.ok else result.describe()


@dataclass(frozen=True)
class TapeHooks:
    """What the tape source does to the system, replaceable in tests: the tape syscalls
    (None: the real ones), opening a node for SG_IO, loading a module, rescanning a device."""

    syscalls: Any = None  # initrd_composer.boot.tape.TapeSyscalls
    open_sg: Callable[[str], Any] = SgDevice  # -> an object with command(cdb, data_out=, data_in=)
    load_module: Callable[[str], str | None] = modprobe
    rescan: Callable[[ScsiDevice, str], None] = rescan


def ensure_module(name: str, ctx: Any, hooks: TapeHooks) -> tuple[bool, str | None]:
    """Load `name` unless it is loaded or denymods= names it: (loaded now or before, what
    happened for the log, None when nothing was done)."""
    if module_loaded(name, ctx.sys_root):
        return True, None
    if name in tuple(getattr(ctx.cfg, "denymods", ())):
        return False, f"{name} not loaded: denymods= names it"
    problem = hooks.load_module(name)
    return (False, f"loading {name} failed: {problem}") if problem else (True, f"loaded {name}")
