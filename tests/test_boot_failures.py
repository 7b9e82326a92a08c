"""PID 1 under failure (QEMU, TCG): a raised error gives the emergency shell, a bad module
is reported and probing goes on, a left-out driver shows up in `missing`, and the
kernel's own request_module() is served from the image."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from module_db.kernel_modules import KernelModules
from tests.image_fixtures import BuiltImage, build, fake_kernel
from tests.kernel_fixtures import module_bytes, vmlinuz_release, write_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures",)
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("qemu-failures")]

E1000 = ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0"]
E1000E = ["-netdev", "user,id=n1", "-device", "e1000e,netdev=n1"]


def _vmlinuz(version: str) -> Path:
    return Path(f"/boot/vmlinuz-{version}")


def _no_panic(result: qemu_boot.BootResult) -> None:
    panics = [line for line in result.lines if qemu_boot.PANIC_MARK in line]
    assert not panics, panics


def _report(result: qemu_boot.BootResult) -> dict[str, Any]:
    assert result.reason == "matched", "\n".join(result.lines[-40:])
    assert result.matched_line is not None
    report: dict[str, Any] = json.loads(result.matched_line.split(":", 1)[1])
    return report


def test_raised_error_drops_to_emergency_shell_with_working_modprobe(all_nics_image: BuiltImage) -> None:
    """A stage raises: the reason is printed, a shell starts (no panic), and in that shell the
    kernel's request_module("fs-vfat") is served by the image's modprobe."""
    probe = "mount -t vfat /dev/null /mnt 2>/dev/null; echo VFAT_$(grep -c '^vfat ' /proc/modules)_LOADED\n"
    # The kernel runs modprobe, which looks in /lib/modules/$(uname -r): the image's modules
    # are there only when the vmlinuz is the kernel they were built for (not so for a kernel
    # directory copied under another name with its vmlinuz).
    release = vmlinuz_release(_vmlinuz(all_nics_image.version))
    assert release == all_nics_image.version, f"{_vmlinuz(all_nics_image.version)} says it is {release}"
    result = qemu_boot.boot(
        _vmlinuz(all_nics_image.version),
        all_nics_image.path,
        "console=ttyS0 probe initrd_composer.fail=probe",
        E1000,
        timeout=120,
        until="VFAT_1_LOADED",
        replies=[qemu_boot.Reply("starting a shell (emergency)", probe)],
    )
    text = "\n".join(result.lines)
    assert "FAILED: RuntimeError: failure requested on the kernel command line in stage probe" in text
    assert "Traceback" in text  # the reason comes with where it happened
    assert result.reason == "matched", "\n".join(result.lines[-40:])
    _no_panic(result)


def test_bad_module_is_reported_and_probing_goes_on(
    tmp_path: Path, kernel: tuple[str, Path], kernel_modules: KernelModules, build_cache: Path
) -> None:
    """e1000.ko with a wrong vermagic: the kernel refuses it, /init records it and still
    reports the AHCI disk; e1000e was never packed, so its device is listed as missing."""
    moddir = fake_kernel(tmp_path / "root", kernel_modules, kernel[1], roots=("ahci", "e1000", "sd_mod"))
    ko = moddir / kernel_modules.deps["e1000"].path
    data = bytearray(module_bytes(ko))  # the ELF inside a .ko.xz/.ko.zst too
    # vermagic= is the release the module was built for: the kernel's own (on a copied test
    # kernel, the release of the vmlinuz it was copied from, which is what boots).
    at = data.index(b"\0vermagic=") + len(b"\0vermagic=")
    assert chr(data[at]).isdigit(), data[at : at + 40]
    data[at] ^= 0x01  # "6.1.0-..." -> "7.1.0-...": a module for another kernel
    write_module(ko, bytes(data))
    image = build(["--kernel", str(moddir), "--all-nics"], tmp_path / "bad.img", build_cache)
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(40 * 2**20)
    result = qemu_boot.boot(
        _vmlinuz(kernel[0]),
        image.path,
        "console=ttyS0 probe",
        [
            *E1000,
            *E1000E,
            "-device",
            "ahci,id=a",
            "-drive",
            f"if=none,id=d,file={disk},format=raw",
            "-device",
            "ide-hd,drive=d,bus=a.0",
        ],
        timeout=120,
    )
    report = _report(result)
    _no_panic(result)
    # The altered bytes break the module's signature before the vermagic is even read:
    # the kernel rejects a bad signature whether or not it enforces signing.
    assert report["failed"].get("e1000") in ("Key was rejected by service", "Exec format error"), report[
        "failed"
    ]
    assert not [n for n in report["netdevs"] if n["driver"] == "e1000"]
    assert any(b["size_bytes"] == 40 * 2**20 and "ahci" in b["drivers"] for b in report["blockdevs"])
    e1000e_dev = [d for d in report["devices"] if d["modalias"].startswith("pci:v00008086d000010D3")]
    assert e1000e_dev and e1000e_dev[0]["modalias"] in report["missing"], report["missing"]


def test_omitted_driver_is_missing_on_the_full_image(
    tmp_path: Path, kernel: tuple[str, Path], build_cache: Path
) -> None:
    image = build(
        ["--kernel", kernel[0], "--all-nics", "--omit-modules", "e1000e"], tmp_path / "o.img", build_cache
    )
    assert "e1000e" not in image.manifest.modules
    rtl = ["-netdev", "user,id=n2", "-device", "rtl8139,netdev=n2"]
    result = qemu_boot.boot(
        _vmlinuz(kernel[0]),
        image.path,
        "console=ttyS0 probe denymods=8139cp,8139too forcemods=loop",
        [*E1000, *E1000E, *rtl],
        timeout=120,
    )
    report = _report(result)
    drivers = {n["driver"] for n in report["netdevs"]}
    assert drivers == {"e1000"}, report["netdevs"]
    assert any(m.startswith("pci:v00008086d000010D3") for m in report["missing"]), report["missing"]
    # denymods: the rtl8139's drivers are in the image but never loaded; forcemods: loop
    # is loaded though no device asks for it
    assert {"8139cp", "8139too"} <= set(report["denied"]), report["denied"]
    assert not {"8139cp", "8139too"} & set(report["loaded"])
    assert "loop" in report["loaded"]
