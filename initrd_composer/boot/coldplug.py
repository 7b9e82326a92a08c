"""Probe the hardware: coldplug every modalias, then follow kernel uevents until quiet.

The monitor starts before the enumeration, so a device that appears while
coldplug runs is seen either way; each modalias is matched and loaded once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from initrd_composer.boot.console import log
from initrd_composer.boot.modload import ModuleLoader
from module_db.alias_match import AliasIndex
from module_db.contract import SCAN_SETTLE_MS, SETTLE_MS


@dataclass
class ProbeState:
    """What probing saw: modalias -> modules it resolved to (empty: nothing in the image)."""

    matches: dict[str, tuple[str, ...]] = field(default_factory=dict)
    builtin: dict[str, tuple[str, ...]] = field(default_factory=dict)  # only built-ins match
    events: int = 0
    rounds: int = 0


class Prober:
    def __init__(
        self,
        loader: ModuleLoader,
        aliases: AliasIndex,
        builtin_aliases: AliasIndex,
        *,
        settle_s: float = SETTLE_MS / 1000,
        max_s: float = 30.0,
        scan_settle_s: float = SCAN_SETTLE_MS / 1000,
    ) -> None:
        self.loader = loader
        self.aliases = aliases
        self.builtin_aliases = builtin_aliases
        self.settle_s = settle_s
        self.max_s = max_s
        self.scan_settle_s = scan_settle_s
        self.state = ProbeState()

    def handle(self, modalias: str) -> None:
        if not modalias or modalias in self.state.matches:
            return
        mods = self.aliases.match(modalias)
        self.state.matches[modalias] = mods
        if mods:
            self.loader.load(mods)
        elif builtin := self.builtin_aliases.match(modalias):
            self.state.builtin[modalias] = builtin  # driven by the kernel itself, not missing

    def quiet_time(self, device: Any) -> float:
        """How long to wait for more after this event. usb-storage registers its SCSI host,
        then waits delay_use (1 s) before scanning it, without a uevent in between: its
        disks come seconds later. Other hosts scan at once; media that a slow SAN or SAS
        HBA discovers later are waited for by the stage that needs them, as
        initramfs-tools waits for its root device."""
        is_host = device.subsystem == "scsi_host" or (
            device.subsystem == "scsi" and device.device_type == "scsi_host"
        )
        if is_host and device.action == "add" and "/usb" in (device.sys_path or ""):
            return self.scan_settle_s
        return self.settle_s

    def run(
        self, context: Any, force: tuple[str, ...] = (), clock: Callable[[], float] = time.monotonic
    ) -> ProbeState:
        import pyudev  # noqa: PLC0415 - boot-only dependency

        monitor = pyudev.Monitor.from_netlink(context, source="kernel")
        monitor.start()
        if force:
            self.loader.load(force)
        for device in context.list_devices():
            self.handle(device.properties.get("MODALIAS", ""))
        self.state.rounds = 1
        started = clock()
        quiet_until = clock() + self.settle_s
        while True:
            now = clock()
            if now >= quiet_until or now - started > self.max_s:
                break
            device = monitor.poll(timeout=max(0.01, quiet_until - now))
            if device is None:
                continue
            self.state.events += 1
            quiet_until = max(quiet_until, clock() + self.quiet_time(device))
            if device.action in ("add", "bind", "change"):
                try:
                    self.handle(device.properties.get("MODALIAS", ""))
                except Exception as exc:  # a vanished device must not stop probing
                    log(f"uevent for {device.sys_path}: {exc!r}", 4)
        # Devices whose uevent we may have missed while busy loading: one more pass.
        for device in context.list_devices():
            self.handle(device.properties.get("MODALIAS", ""))
        self.state.rounds = 2
        return self.state
