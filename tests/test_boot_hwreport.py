"""hwreport on a fake sysfs tree: network and block devices, their driver chains, disk vs
cdrom vs tape, what is skipped, the report and the `hwreport:` line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot import hwreport
from initrd_composer.boot.cmdline import BootConfig, parse_cmdline
from initrd_composer.boot.coldplug import ProbeState
from initrd_composer.boot.hwreport import blockdevs, build_report, driver_chain, netdevs, publish
from initrd_composer.boot.modload import LoadResult

PCI = "devices/pci0000:00"
AHCI = f"{PCI}/0000:00:1f.2"
SATA_DISK = f"{AHCI}/ata1/host0/target0:0:0/0:0:0:0"
SATA_CD = f"{AHCI}/ata2/host1/target1:0:0/1:0:0:0"
XHCI = f"{PCI}/0000:00:14.0"
USB_DISK = f"{XHCI}/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0"
NVME = f"{PCI}/0000:00:04.0"
SAS = f"{PCI}/0000:00:06.0"
TAPE = f"{SAS}/host2/port-2:0/end_device-2:0/target2:0:0/2:0:0:0"
NIC = f"{PCI}/0000:00:03.0"


class FakeSys:
    """Builds a sysfs-shaped tree: real directories under devices/, symlinks elsewhere."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "devices").mkdir(parents=True)

    def device(self, rel: str, driver: str = "", bus: str = "pci", **files: str) -> Path:
        path = self.root / rel
        path.mkdir(parents=True, exist_ok=True)
        if driver:
            target = self.root / "bus" / bus / "drivers" / driver
            target.mkdir(parents=True, exist_ok=True)
            (path / "driver").symlink_to(os.path.relpath(target, path))
        for name, text in files.items():
            (path / name).write_text(text + "\n")
        return path

    def link(self, rel: str, target: Path) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(os.path.relpath(target, path.parent))

    def block(self, name: str, parent: str | None, sectors: int) -> Path:
        """A block device under its parent device (or virtual), listed in class/block."""
        if parent is None:
            path = self.device(f"devices/virtual/block/{name}", size=str(sectors))
        else:
            path = self.device(f"{parent}/block/{name}", size=str(sectors))
            self.link(str(path.relative_to(self.root)) + "/device", self.root / parent)
        self.link(f"class/block/{name}", path)
        return path

    def partition(self, name: str, disk: Path, sectors: int) -> None:
        path = self.device(str((disk / name).relative_to(self.root)), size=str(sectors), partition="1")
        self.link(f"class/block/{name}", path)


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSys:
    fs = FakeSys(tmp_path / "sys")
    fs.device(AHCI, "ahci")
    fs.device(SATA_DISK, "sd", bus="scsi", type="0")
    fs.device(SATA_CD, "sr", bus="scsi", type="5")
    fs.device(XHCI, "xhci_hcd")
    fs.device(f"{XHCI}/usb2", "usb", bus="usb")
    fs.device(f"{XHCI}/usb2/2-1", "usb", bus="usb")
    fs.device(f"{XHCI}/usb2/2-1/2-1:1.0", "usb-storage", bus="usb")
    fs.device(USB_DISK, "sd", bus="scsi", type="0")
    fs.device(NVME, "nvme")
    fs.device(f"{NVME}/nvme/nvme0")  # a class device: no driver of its own
    fs.device(SAS, "mptsas")
    fs.device(TAPE, "st", bus="scsi", type="1")
    fs.device(NIC, "e1000")
    sda = fs.block("sda", SATA_DISK, 2097152)
    fs.partition("sda1", sda, 2095104)
    fs.block("sr0", SATA_CD, 0)
    fs.block("sdb", USB_DISK, 7864320)
    fs.block("nvme0n1", f"{NVME}/nvme/nvme0", 1000)
    fs.block("loop0", None, 100)
    fs.block("ram0", None, 8192)
    fs.block("zram0", None, 8192)
    for name in ("st0", "st0l", "st0m", "st0a", "nst0", "nst0l", "nst0a"):
        fs.link(f"class/scsi_tape/{name}/device", fs.root / TAPE)
    nic = fs.device(f"{NIC}/net/eth0", address="52:54:00:12:34:56")
    fs.link(f"{NIC}/net/eth0/device", fs.root / NIC)
    fs.link("class/net/eth0", nic)
    br = fs.device("devices/virtual/net/br0", address="aa:bb:cc:00:00:01")
    fs.link("class/net/br0", br)
    lo = fs.device("devices/virtual/net/lo", address="00:00:00:00:00:00")
    fs.link("class/net/lo", lo)
    return fs


def test_driver_chain_nearest_first(sysfs: FakeSys) -> None:
    root = str(sysfs.root)
    assert driver_chain(str(sysfs.root / SATA_DISK), root) == ["sd", "ahci"]
    assert driver_chain(str(sysfs.root / USB_DISK), root) == ["sd", "usb-storage", "usb", "xhci_hcd"]
    assert driver_chain(str(sysfs.root / "class/block/sdb/device"), root) == [
        "sd", "usb-storage", "usb", "xhci_hcd"
    ]
    assert driver_chain(str(sysfs.root / "devices/virtual/block/loop0"), root) == []


def test_driver_chain_stops_at_the_devices_directory(sysfs: FakeSys, tmp_path: Path) -> None:
    # drivers outside <sys_root>/devices (here: on sys_root itself and above it) are never reported
    (sysfs.root / "driver").symlink_to("bus/pci/drivers/ahci")
    (tmp_path / "driver").symlink_to("sys/bus/pci/drivers/ahci")
    (sysfs.root / "devices" / "driver").symlink_to("../bus/pci/drivers/ahci")
    assert driver_chain(str(sysfs.root / NIC), str(sysfs.root)) == ["e1000"]
    assert driver_chain(str(sysfs.root / "devices"), str(sysfs.root)) == []
    # a device outside this sysfs root has no chain within it
    assert driver_chain(str(sysfs.root / NIC), str(tmp_path / "other")) == []


def test_driver_chain_through_a_symlinked_sys_root(sysfs: FakeSys, tmp_path: Path) -> None:
    alias = tmp_path / "sys-link"
    alias.symlink_to(sysfs.root)
    assert driver_chain(str(alias / "class/block/sda/device"), str(alias)) == ["sd", "ahci"]


def test_netdevs(sysfs: FakeSys) -> None:
    assert netdevs(str(sysfs.root)) == [
        {"name": "br0", "mac": "aa:bb:cc:00:00:01", "driver": "", "drivers": []},
        {"name": "eth0", "mac": "52:54:00:12:34:56", "driver": "e1000", "drivers": ["e1000"]},
    ]


def test_blockdevs(sysfs: FakeSys) -> None:
    devs = {d["name"]: d for d in blockdevs(str(sysfs.root))}
    assert sorted(devs) == ["nvme0n1", "sda", "sdb", "sr0", "st0"]
    assert devs["sda"] == {
        "name": "sda", "driver": "sd", "drivers": ["sd", "ahci"], "size_bytes": 2097152 * 512, "type": "disk"
    }
    assert devs["sr0"]["type"] == "cdrom" and devs["sr0"]["driver"] == "sr"
    assert devs["sdb"]["drivers"] == ["sd", "usb-storage", "usb", "xhci_hcd"]
    assert devs["sdb"]["size_bytes"] == 7864320 * 512
    assert devs["nvme0n1"] == {
        "name": "nvme0n1", "driver": "nvme", "drivers": ["nvme"], "size_bytes": 512000, "type": "disk"
    }
    assert devs["st0"] == {
        "name": "st0", "driver": "st", "drivers": ["st", "mptsas"], "size_bytes": 0, "type": "tape"
    }


def test_scsi_type_5_is_a_cdrom_whatever_its_name(sysfs: FakeSys) -> None:
    cd = sysfs.device(f"{AHCI}/ata3/host3/target3:0:0/3:0:0:0", "sr", bus="scsi", type="5")
    sysfs.block("sdz", str(cd.relative_to(sysfs.root)), 4)
    devs = {d["name"]: d for d in blockdevs(str(sysfs.root))}
    assert devs["sdz"]["type"] == "cdrom"


def test_an_empty_or_missing_sysfs_gives_nothing(tmp_path: Path) -> None:
    assert netdevs(str(tmp_path)) == []
    assert blockdevs(str(tmp_path)) == []


class Dev:
    def __init__(self, sys_path: str, subsystem: str, modalias: str, driver: str | None) -> None:
        self.sys_path = sys_path
        self.subsystem = subsystem
        self.properties = {"MODALIAS": modalias} if modalias else {}
        self.driver = driver


class Context:
    def __init__(self, devices: list[Dev]) -> None:
        self.devices = devices

    def list_devices(self) -> list[Dev]:
        return self.devices


def test_build_report(sysfs: FakeSys) -> None:
    nic = "pci:v00008086d0000100Esv00008086sd0000001Ebc02sc00i00"
    gpu = "pci:v000010DEd00001234sv00000000sd00000000bc03sc00i00"
    serial = "acpi:PNP0501:"
    context = Context([
        Dev("/sys/" + NIC, "pci", nic, "e1000"),
        Dev("/sys/devices/pci0000:00/0000:00:02.0", "pci", gpu, None),
        Dev("/sys/devices/pnp0/00:01", "pnp", serial, "serial"),  # a built-in driver bound
        Dev("/sys/devices/virtual/misc/x", "misc", "", None),
    ])
    state = ProbeState(matches={nic: ("e1000",), gpu: (), serial: ()})
    loads = LoadResult(loaded=["e1000"], failed={"nodev": "No such device"}, denied=["floppy"])
    timings = {"init_start": 1.5, "probe_end": 3.25}
    report = build_report(context, state, loads, timings, sys_root=str(sysfs.root))
    assert report["devices"] == [
        {"syspath": "/sys/" + NIC, "subsystem": "pci", "modalias": nic, "driver": "e1000",
         "modules": ["e1000"]},
        {"syspath": "/sys/devices/pci0000:00/0000:00:02.0", "subsystem": "pci", "modalias": gpu,
         "driver": "", "modules": []},
        {"syspath": "/sys/devices/pnp0/00:01", "subsystem": "pnp", "modalias": serial, "driver": "serial",
         "modules": []},
    ]
    assert report["missing"] == [gpu]
    assert [d["name"] for d in report["netdevs"]] == ["br0", "eth0"]
    assert [d["name"] for d in report["blockdevs"]] == ["nvme0n1", "sda", "sdb", "sr0", "st0"]
    assert (report["loaded"], report["failed"], report["denied"]) == (
        ["e1000"], {"nodev": "No such device"}, ["floppy"]
    )
    assert report["timings"] == timings


def test_report_shows_what_init_parsed_from_the_kernel_command_line(sysfs: FakeSys) -> None:
    cfg = parse_cmdline(
        "BOOT_IMAGE=vmlinuz console=ttyS0 nuke probe pxe prefix=rescue"
        " ipconf=eth0:10.0.2.15:255.255.255.0::10.0.2.2 ip=dhcp BOOTIF=01-52-54-00-12-34-56 ping=0"
        " nfsmount=10.0.2.2:/srv/rescue denymods=floppy,snd-pcm obdr=1 tapedev=nst0 frobnicate"
        " ip=eth0.5:dhcp:9000 nameserver=10.0.2.3 vlan=eth0.5:bond0"
        " bond=bond0:eth1,eth2:mode=active-backup,miimon=100"
    )
    kernel_ip: dict[str, Any] = {
        "device": "", "method": "dhcp", "address": "", "gateway": "", "netmask": "", "hostname": "",
        "server": "", "mtu": None, "macaddr": "", "dns": [], "ntp": "", "client_id": "", "note": "",
    }  # fmt: skip

    def report(cmdline: BootConfig | None) -> dict[str, Any]:
        root = str(sysfs.root)
        return build_report(Context([]), ProbeState(), LoadResult(), {}, sys_root=root, cmdline=cmdline)

    section = report(cfg)["cmdline"]
    assert section == {
        "mode": "probe",
        "params": {
            "pxe": True,
            "prefix": "rescue",
            "ipconf": {"device": "eth0", "dhcp": False, "address": "10.0.2.15", "netmask": "255.255.255.0",
                       "broadcast": "", "gateway": "10.0.2.2"},
            # every ip= word in order, each with all its fields
            "ip": [kernel_ip, {**kernel_ip, "device": "eth0.5", "mtu": 9000}],
            "nameservers": ["10.0.2.3"],
            "vlans": [{"name": "eth0.5", "parent": "bond0", "vlan_id": 5}],
            "bonds": [{"name": "bond0", "slaves": ["eth1", "eth2"], "options": [["mode", "active-backup"],
                       ["miimon", "100"]], "mtu": None}],
            "bootif": "52:54:00:12:34:56",
            "ping": 0,
            "nfsmount": "10.0.2.2:/srv/rescue",
            "denymods": ["floppy", "snd_pcm"],
        },
        "unknown": ["obdr=1", "frobnicate"],
        "problems": [
            "probe: mode already nuke; the last one wins",
            "tapedev=nst0: expected /dev/nstN; ignored",
        ],
    }
    # the console line carries it as it is
    assert json.loads(publish(report(cfg)).removeprefix("hwreport: "))["cmdline"] == section
    # an empty command line: no mode, nothing accepted, nothing ignored
    assert report(parse_cmdline(""))["cmdline"] == {"mode": None, "params": {}, "unknown": [], "problems": []}
    # without a parsed command line (callers other than /init) there is no section
    assert "cmdline" not in report(None)


def test_publish_writes_json_and_returns_the_console_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "run" / "initrd-composer" / "hwreport.json"
    monkeypatch.setattr(hwreport, "HWREPORT_PATH", str(target))
    report = {"netdevs": [{"name": "eth0", "mac": "52:54:00:12:34:56"}], "missing": [], "timings": {"a": 1.0}}
    line = publish(report)
    assert line.startswith("hwreport: {")
    assert "\n" not in line
    assert json.loads(line.removeprefix("hwreport: ")) == report
    assert target.read_text() == line.removeprefix("hwreport: ") + "\n"
    # key order is stable, so two boots of one machine print the same line
    assert line == publish(dict(reversed(report.items())))


def test_publish_still_returns_the_line_when_run_is_not_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "run").write_text("not a directory")
    monkeypatch.setattr(hwreport, "HWREPORT_PATH", str(tmp_path / "run" / "x" / "hwreport.json"))
    assert publish({"devices": []}) == 'hwreport: {"devices":[]}'
