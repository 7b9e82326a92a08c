"""The `hwreport:` line: what this image found and drives on this machine."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from initrd_composer.boot.cmdline import BootConfig
from initrd_composer.boot.coldplug import ProbeState
from initrd_composer.boot.console import log
from initrd_composer.boot.modload import LoadResult
from initrd_composer.boot.sysfs import read_attr

HWREPORT_PATH = "/run/initrd-composer/hwreport.json"


def _driver_of(sys_device: str) -> str:
    link = os.path.join(sys_device, "driver")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else ""


def driver_chain(sys_device: str, sys_root: str = "/sys") -> list[str]:
    """Drivers bound at and above a device, nearest first: a SATA disk gives
    [sd, ahci], a USB stick [sd, usb-storage, usb, xhci_hcd]; tells which controller
    serves a disk."""
    chain: list[str] = []
    top = os.path.join(os.path.realpath(sys_root), "devices")
    path = os.path.realpath(sys_device)
    while path.startswith(top + "/"):
        drv = _driver_of(path)
        if drv and drv not in chain:
            chain.append(drv)
        path = os.path.dirname(path)
    return chain


def devices(context: Any, state: ProbeState) -> list[dict[str, Any]]:
    out = []
    for dev in context.list_devices():
        modalias = dev.properties.get("MODALIAS", "")
        if not modalias:
            continue
        out.append(
            {
                "syspath": dev.sys_path,
                "subsystem": dev.subsystem or "",
                "modalias": modalias,
                "driver": dev.driver or "",
                "modules": list(state.matches.get(modalias, ())),
            }
        )
    return out


def netdevs(sys_root: str = "/sys") -> list[dict[str, Any]]:
    base = f"{sys_root}/class/net"
    out = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if name == "lo":
            continue
        dev = f"{base}/{name}/device"
        chain = driver_chain(dev, sys_root) if os.path.exists(dev) else []
        out.append(
            {
                "name": name,
                "mac": read_attr(f"{base}/{name}/address"),
                "driver": chain[0] if chain else "",
                "drivers": chain,
            }
        )
    return out


def blockdevs(sys_root: str = "/sys") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    base = f"{sys_root}/class/block"
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        entry = f"{base}/{name}"
        if os.path.exists(f"{entry}/partition") or name.startswith(("loop", "ram", "zram")):
            continue
        dev = f"{entry}/device"
        scsi_type = read_attr(f"{dev}/type")
        kind = "cdrom" if scsi_type == "5" or name.startswith("sr") else "disk"
        size = int(read_attr(f"{entry}/size") or 0) * 512
        chain = driver_chain(dev, sys_root) if os.path.exists(dev) else []
        out.append(
            {
                "name": name,
                "driver": chain[0] if chain else "",
                "drivers": chain,
                "size_bytes": size,
                "type": kind,
            }
        )
    tape = f"{sys_root}/class/scsi_tape"
    for name in sorted(os.listdir(tape)) if os.path.isdir(tape) else []:
        if name.startswith("st") and name[2:].isdigit():
            chain = driver_chain(f"{tape}/{name}/device", sys_root)
            out.append(
                {
                    "name": name,
                    "driver": chain[0] if chain else "",
                    "drivers": chain,
                    "size_bytes": 0,
                    "type": "tape",
                }
            )
    return out


def _plain(value: Any) -> Any:
    """A parsed value as JSON data: a dataclass as a dict, a tuple as a list, recursively
    (ip= configurations, bond options as [key, value] pairs)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def cmdline_section(cfg: BootConfig) -> dict[str, Any]:
    """What /init made of the kernel command line: the mode, every parameter it accepted
    (only those given; ipconf= as its fields, ip=, vlan=, bond= as lists of theirs), the
    unknown words it ignored and the malformed or conflicting ones, each with the reason."""
    params: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ("mode", "unknown", "problems") or value is None or value is False or value == ():
            continue
        params[f.name] = _plain(value)
    return {"mode": cfg.mode, "params": params, "unknown": list(cfg.unknown), "problems": list(cfg.problems)}


def build_report(
    context: Any,
    state: ProbeState,
    loads: LoadResult,
    timings: dict[str, float],
    *,
    sys_root: str = "/sys",
    cmdline: BootConfig | None = None,
) -> dict[str, Any]:
    """The report; `cmdline` (what /init parsed from /proc/cmdline) adds its section."""
    devs = devices(context, state)
    missing = sorted(
        {
            d["modalias"]
            for d in devs
            if not d["modules"] and not d["driver"] and d["modalias"] not in state.builtin
        }
    )
    report: dict[str, Any] = {
        "devices": devs,
        "netdevs": netdevs(sys_root),
        "blockdevs": blockdevs(sys_root),
        "missing": missing,
        "loaded": loads.loaded,
        "failed": loads.failed,
        "denied": loads.denied,
        "timings": timings,
    }
    if cmdline is not None:
        report["cmdline"] = cmdline_section(cmdline)
    return report


def publish(report: dict[str, Any]) -> str:
    """Save the report under /run for later stages; return the console line. A report that
    cannot be saved is said in one log line: the console line still carries it."""
    text = json.dumps(report, sort_keys=True, separators=(",", ":"))
    try:
        os.makedirs(os.path.dirname(HWREPORT_PATH), exist_ok=True)
        with open(HWREPORT_PATH, "w") as f:
            f.write(text + "\n")
    except OSError as exc:
        log(f"cannot save the hardware report to {HWREPORT_PATH}: {exc.strerror or exc}", 4)
    return "hwreport: " + text
