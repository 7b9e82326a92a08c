"""One --all-nics image booted (QEMU, TCG, `probe`) on every NIC and storage controller
QEMU emulates on PCI and USB: the hwreport must name the driver and show the device."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.runner import run
from tests.image_fixtures import BuiltImage
from tests.qemu_matrix import GROUPS, NOT_TESTED, BootGroup, Nic, Storage, qemu_args

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures",)
# One xdist group per boot group: with `--dist loadgroup` the boots spread over the
# workers, and each boot happens once, on the worker that runs its tests.
pytestmark = [pytest.mark.qemu]


def _on(group: str) -> pytest.MarkDecorator:
    return pytest.mark.xdist_group(f"qemu-{group}")


def boot_report(
    image: Path, version: str, append: str, devices: list[str], timeout: float = 150
) -> dict[str, Any]:
    """Boot Debian's kernel with `image`; the parsed hwreport (fails with the console tail)."""
    result = qemu_boot.boot(Path(f"/boot/vmlinuz-{version}"), image, append, devices, timeout=timeout)
    tail = "\n".join(result.lines[-40:])
    assert result.reason == "matched", f"boot ended by {result.reason}:\n{tail}"
    assert result.matched_line is not None
    report: dict[str, Any] = json.loads(result.matched_line.split(":", 1)[1])
    return report


@pytest.fixture(scope="module")
def reports(
    all_nics_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """hwreport per boot group, booted on first use and kept: one boot per group."""
    workdir = tmp_path_factory.mktemp("matrix")

    class Lazy(dict[str, dict[str, Any]]):
        def __missing__(self, name: str) -> dict[str, Any]:
            group = next(g for g in GROUPS if g.name == name)
            start = time.monotonic()
            self[name] = boot_report(
                all_nics_image.path, all_nics_image.version, "console=ttyS0 probe", qemu_args(group, workdir)
            )
            print(f"matrix boot {name}: hwreport after {time.monotonic() - start:.1f} s")
            return self[name]

    return Lazy()


def _nic_cases() -> list[Any]:
    return [
        pytest.param(g, i, n, id=f"{g.name}-{n.model}", marks=_on(g.name))
        for g in GROUPS
        for i, n in enumerate(g.nics)
    ]


def _storage_cases() -> list[Any]:
    return [
        pytest.param(g, s, id=f"{g.name}-{s.model}", marks=_on(g.name)) for g in GROUPS for s in g.storage
    ]


@pytest.mark.parametrize(("group", "index", "nic"), _nic_cases())
def test_nic_is_driven(reports: dict[str, dict[str, Any]], group: BootGroup, index: int, nic: Nic) -> None:
    report = reports[group.name]
    mac = f"52:54:00:00:{index // 256:02x}:{index % 256:02x}"
    found = [n for n in report["netdevs"] if n["mac"] == mac]
    assert found, f"{nic.model}: no netdev with {mac}; netdevs {report['netdevs']}; loaded {report['loaded']}"
    assert nic.driver in found[0]["drivers"], f"{nic.model}: {found[0]}"


@pytest.mark.parametrize(("group", "storage"), _storage_cases())
def test_storage_is_driven(reports: dict[str, dict[str, Any]], group: BootGroup, storage: Storage) -> None:
    report = reports[group.name]
    if storage.no_disk:
        bound = [d for d in report["devices"] if d["driver"] == storage.driver]
        assert bound, f"{storage.model}: {storage.driver} bound to nothing; loaded {report['loaded']}"
        return
    disks = [
        b for b in report["blockdevs"] if b["type"] == "disk" and b["size_bytes"] == storage.disk_mib * 2**20
    ]
    assert disks, (
        f"{storage.model}: no {storage.disk_mib} MiB disk; {report['blockdevs']}; loaded {report['loaded']}"
    )
    chain = disks[0]["drivers"]
    assert storage.driver in chain, f"{storage.model}: disk {disks[0]}"
    if storage.kind in ("usb", "usb-bot"):
        assert "usb-storage" in chain, chain
    if storage.cdrom:
        cds = [b for b in report["blockdevs"] if b["type"] == "cdrom" and storage.driver in b["drivers"]]
        assert cds, f"{storage.model}: no CD-ROM behind it; {report['blockdevs']}"


@_on("usb")
def test_usb_keyboard_gets_hid_drivers(reports: dict[str, dict[str, Any]]) -> None:
    """usbhid binds the keyboard's USB interface; the HID device it creates (hid:b0003g0001...)
    matches hid_generic, a module in Debian's kernel, which /init loads and binds to it."""
    report = reports["usb"]
    loaded = set(report["loaded"])
    assert {"usbhid", "hid_generic"} <= loaded, sorted(loaded)
    bound = {(d["subsystem"], d["driver"]) for d in report["devices"]}
    assert ("usb", "usbhid") in bound, sorted(bound)
    assert ("hid", "hid-generic") in bound, sorted(bound)


@pytest.mark.parametrize("group", [pytest.param(g, id=g.name, marks=_on(g.name)) for g in GROUPS])
def test_report_timings_and_no_failures(reports: dict[str, dict[str, Any]], group: BootGroup) -> None:
    report = reports[group.name]
    timings = report["timings"]
    assert 0 < timings["init_start"] < timings["probe_end"]
    assert not set(report["failed"]) - {"crct10dif_pclmul"}, report["failed"]  # pclmul: no CPU flag


def test_untested_models_have_reasons() -> None:
    tested = {n.model for g in GROUPS for n in g.nics} | {
        s.model.split("@")[0] for g in GROUPS for s in g.storage
    }
    assert not tested & set(NOT_TESTED)
    assert all(len(reason) > 20 for reason in NOT_TESTED.values())


# The categories of `-device help` the matrix covers: NICs, storage (controllers and what
# attaches to them), and the USB host controllers the USB NICs and sticks sit behind.
CATEGORIES = ("Network devices", "Storage devices", "USB devices")
_HELP_LINE = re.compile(r'^name "([^"]+)"(?:, bus [^,]+)?(?:, alias "([^"]+)")?')


def qemu_device_models() -> dict[str, dict[str, str]]:
    """`qemu-system-x86_64 -device help`: category -> {device name: its alias or ""}."""
    proc = run([qemu_boot.QEMU, "-device", "help"], timeout=60)  # raises on a non-zero exit
    categories: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in proc.stdout.decode().splitlines():
        if line.endswith(" devices:"):
            current = categories.setdefault(line.removesuffix(":"), {})
        elif m := _HELP_LINE.match(line):
            current[m.group(1)] = m.group(2) or ""
    return categories


def booted_models(workdir: Path) -> set[str]:
    """Every device model a boot group puts in its VM and asserts on: the NIC and storage
    models (piix3-ide is the pc machine's own, never a -device), their USB host controllers,
    and every other -device its qemu arguments carry (scsi-hd, ide-cd, sd-card, nvme-subsys, ...)."""
    models = {n.model for g in GROUPS for n in g.nics}
    models |= {s.model.split("@")[0] for g in GROUPS for s in g.storage}
    models |= {n.usb_host for g in GROUPS for n in g.nics if n.usb_host}
    models |= {s.usb_host for g in GROUPS for s in g.storage if s.usb_host}
    for group in GROUPS:
        args = qemu_args(group, workdir / group.name)
        models |= {args[i + 1].split(",")[0] for i, arg in enumerate(args[:-1]) if arg == "-device"}
    return models


def test_matrix_covers_every_nic_and_storage_model_qemu_has(tmp_path: Path) -> None:
    """Each device QEMU lists as a network, storage or USB device is booted by the matrix or
    in NOT_TESTED with a reason; and neither list names a device this QEMU does not have."""
    categories = qemu_device_models()
    assert set(CATEGORIES) <= set(categories), sorted(categories)
    listed = {name: alias for c in CATEGORIES for name, alias in categories[c].items()}
    assert {"e1000", "virtio-blk-pci", "qemu-xhci"} <= set(listed)  # the parse found the lists
    for group in GROUPS:
        (tmp_path / group.name).mkdir()
    booted = booted_models(tmp_path)
    untested = {key.split("@")[0] for key in NOT_TESTED}
    ignored = sorted(name for name, alias in listed.items() if not {name, alias} & (booted | untested) - {""})
    assert ignored == [], f"in neither the boot matrix nor NOT_TESTED: {ignored}"
    every_device = {n for c in categories.values() for pair in c.items() for n in pair if n}
    assert not (booted | untested) - every_device - {"usb-kbd"}, "names QEMU does not know"
