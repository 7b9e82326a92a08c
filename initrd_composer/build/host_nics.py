"""The build host's own network devices, for images built without --all-nics."""

from __future__ import annotations

from pathlib import Path

from module_db.kernel_modules import KernelModules
from module_db.names import normalize_name


def host_nic_modules(km: KernelModules, sys_root: Path = Path("/sys")) -> dict[str, str]:
    """module -> interface that needs it, for each physical NIC under sys_root/class/net.

    The bound driver's module is taken when the host kernel reports one; the
    modalias resolved against the *target* kernel covers a host running another kernel.
    """
    found: dict[str, str] = {}
    net = sys_root / "class" / "net"
    if not net.is_dir():
        return found
    for iface in sorted(net.iterdir()):
        device = iface / "device"
        if not device.exists():
            continue  # virtual: lo, bridges, tunnels
        names: list[str] = []
        module_link = device / "driver" / "module"
        if module_link.exists():
            names.append(normalize_name(module_link.resolve().name))
        try:
            modalias = (device / "modalias").read_text().strip()
        except OSError:
            modalias = ""
        if modalias:
            names.extend(km.resolve(modalias))
        for name in names:
            if name in km.deps:
                found.setdefault(name, iface.name)
    return found
