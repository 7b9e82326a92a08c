"""The rescue ISO boots: SeaBIOS and OVMF from a CD drive, both from the same file as a
USB disk (hybrid), and OVMF with Secure Boot enforced (Microsoft keys enrolled), where
shim, GRUB, the kernel and every module it loads must be signed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from initrd_composer.cli import main as cli
from module_db.kernel_modules import KernelModules
from tests.image_fixtures import EPOCH, BuiltImage, build, build_env, fake_kernel
from tests.kernel_fixtures import module_bytes, write_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures",)
pytestmark = [pytest.mark.qemu]

SERIAL_CMDLINE = "console=tty0 console=ttyS0,115200n8 probe"
E1000 = ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0"]
SIG_MAGIC = b"~Module signature appended~\n"
KEY_REJECTED = "Key was rejected by service"  # EKEYREJECTED


def make_iso(initrd: Path, out: Path, cache: Path, *extra: str) -> Path:
    """An ISO whose default entry is `probe`, booted after one second."""
    argv = ["iso", "--initrd", str(initrd), "--default-mode", "probe", "--timeout", "1", *extra]
    with build_env(cache, EPOCH):
        assert cli.main([*argv, "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def iso(all_nics_image: BuiltImage, build_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iso(all_nics_image.path, tmp_path_factory.mktemp("iso") / "rescue.iso", build_cache)


def cdrom(iso: Path, bus: str | None = None) -> list[str]:
    where = f",bus={bus}" if bus else ""
    return ["-drive", f"file={iso},media=cdrom,if=none,id=cd0,readonly=on",
            "-device", f"ide-cd,drive=cd0,bootindex=0{where}"]


def usb_disk(iso: Path) -> list[str]:
    return ["-device", "qemu-xhci,id=xhci", "-drive", f"file={iso},format=raw,if=none,id=u0,readonly=on",
            "-device", "usb-storage,drive=u0,bus=xhci.0,bootindex=0"]


def sata_disk(path: Path, size: int) -> list[str]:
    """A blank disk on q35's built-in AHCI controller (second port)."""
    with path.open("wb") as f:
        f.truncate(size)
    return ["-drive", f"file={path},format=raw,if=none,id=hd0", "-device", "ide-hd,drive=hd0,bus=ide.1"]


def report_of(result: qemu_boot.BootResult) -> dict[str, object]:
    assert result.reason == "matched", "\n".join(result.lines[-40:])
    assert result.matched_line is not None
    report = json.loads(result.matched_line.split(":", 1)[1])
    assert isinstance(report, dict)
    return report


def kernel_cmdline(result: qemu_boot.BootResult) -> str:
    lines = [line for line in result.lines if "Command line:" in line]
    assert lines, "the kernel printed no command line"
    return lines[0].split("Command line:", 1)[1].strip()


def _blockdevs(report: dict[str, object]) -> list[dict[str, object]]:
    devs = report["blockdevs"]
    assert isinstance(devs, list)
    return devs


def _netdev_drivers(report: dict[str, object]) -> set[str]:
    devs = report["netdevs"]
    assert isinstance(devs, list)
    return {str(n["driver"]) for n in devs}


def _check_booted_from(report: dict[str, object], iso: Path, kind: str, driver: str) -> None:
    size = iso.stat().st_size
    assert any(
        b["type"] == kind and b["size_bytes"] == size and driver in b["drivers"]  # type: ignore[operator]
        for b in _blockdevs(report)
    ), report["blockdevs"]
    assert "e1000" in _netdev_drivers(report)


@pytest.mark.xdist_group("iso-bios")
def test_seabios_boots_the_iso_as_a_cdrom(iso: Path) -> None:
    result = qemu_boot.boot_firmware([*cdrom(iso), *E1000], timeout=90)
    report = report_of(result)
    text = "\n".join(result.lines)
    assert "ISOLINUX" in text and "initrd-composer rescue" in text  # the menu, on the serial port
    assert SERIAL_CMDLINE in kernel_cmdline(result)
    _check_booted_from(report, iso, "cdrom", "sr")


@pytest.mark.xdist_group("iso-bios")
def test_seabios_boots_the_iso_written_to_a_usb_disk(iso: Path) -> None:
    report = report_of(qemu_boot.boot_firmware([*usb_disk(iso), *E1000], timeout=90))
    _check_booted_from(report, iso, "disk", "usb-storage")


@pytest.mark.xdist_group("iso-uefi")
def test_ovmf_boots_the_iso_as_a_cdrom(iso: Path, tmp_path: Path) -> None:
    firmware = qemu_boot.ovmf_args(tmp_path / "vars.fd")
    result = qemu_boot.boot_firmware([*firmware, *cdrom(iso, "ide.0"), *E1000], timeout=90)
    report = report_of(result)
    text = "\n".join(result.lines)
    assert "GNU GRUB" in text and "probe: report the hardware" in text  # GRUB's menu on serial
    assert SERIAL_CMDLINE in kernel_cmdline(result)
    _check_booted_from(report, iso, "cdrom", "sr")


@pytest.mark.xdist_group("iso-uefi")
def test_ovmf_boots_the_iso_written_to_a_usb_disk(iso: Path, tmp_path: Path) -> None:
    firmware = qemu_boot.ovmf_args(tmp_path / "vars.fd")
    report = report_of(qemu_boot.boot_firmware([*firmware, *usb_disk(iso), *E1000], timeout=90))
    _check_booted_from(report, iso, "disk", "usb-storage")


@pytest.mark.xdist_group("iso-uefi")
def test_secure_boot_loads_the_signed_chain_and_modules(iso: Path, tmp_path: Path) -> None:
    firmware = qemu_boot.ovmf_args(tmp_path / "vars.fd", secure_boot=True)
    disk = sata_disk(tmp_path / "disk.img", 48 * 2**20)
    result = qemu_boot.boot_firmware([*firmware, *cdrom(iso, "ide.0"), *disk, *E1000], timeout=90)
    report = report_of(result)
    text = "\n".join(result.lines)
    assert "Secure boot enabled" in text and "Kernel is locked down from EFI Secure Boot" in text
    loaded = report["loaded"]
    assert isinstance(loaded, list) and {"e1000", "ahci", "sd_mod", "sr_mod"} <= set(loaded)
    failed = report["failed"]
    assert isinstance(failed, dict)  # crct10dif_pclmul fails with ENODEV: TCG's CPU lacks PCLMUL
    assert not [m for m, why in failed.items() if why in (KEY_REJECTED, "Operation not permitted")], failed
    assert any(b["size_bytes"] == 48 * 2**20 for b in _blockdevs(report))
    _check_booted_from(report, iso, "cdrom", "sr")


def strip_signature(ko: Path) -> None:
    """Drop the PKCS#7 signature the distribution appended to a module (inside the
    compressed file for a .ko.xz/.ko.zst: unpacked, stripped, packed again)."""
    data = module_bytes(ko)
    assert data.endswith(SIG_MAGIC), f"{ko} is not signed"
    info = data[-len(SIG_MAGIC) - 12 : -len(SIG_MAGIC)]  # struct module_signature
    sig_len = int.from_bytes(info[8:12], "big")
    write_module(ko, data[: -len(SIG_MAGIC) - 12 - sig_len])
    assert not module_bytes(ko).endswith(SIG_MAGIC)


@pytest.fixture(scope="module")
def unsigned_e1000_image(
    tmp_path_factory: pytest.TempPathFactory, kernel: tuple[str, Path], kernel_modules: KernelModules,
    build_cache: Path,
) -> Path:
    tmp = tmp_path_factory.mktemp("unsigned")
    moddir = fake_kernel(tmp / "root", kernel_modules, kernel[1], roots=("ahci", "e1000", "sd_mod", "sr_mod"))
    strip_signature(moddir / kernel_modules.deps["e1000"].path)
    built = build(["--kernel", str(moddir), "--all-nics"], tmp / "unsigned.img", build_cache)
    parsed = built.parsed()
    assert not parsed.read(built.module_path("e1000")).endswith(SIG_MAGIC)
    assert parsed.read(built.module_path("ahci")).endswith(SIG_MAGIC)  # the others keep theirs
    return built.path


@pytest.mark.xdist_group("iso-bios")
def test_unsigned_module_loads_without_secure_boot(
    unsigned_e1000_image: Path, kernel: tuple[str, Path]
) -> None:
    """The control: the same image, no Secure Boot: the kernel only taints itself."""
    result = qemu_boot.boot(
        Path(f"/boot/vmlinuz-{kernel[0]}"), unsigned_e1000_image, "console=ttyS0 probe", E1000, timeout=90
    )
    report = report_of(result)
    assert "e1000" in _netdev_drivers(report)


@pytest.mark.xdist_group("iso-uefi")
def test_unsigned_module_is_refused_under_secure_boot(
    unsigned_e1000_image: Path, kernel: tuple[str, Path], build_cache: Path, tmp_path: Path
) -> None:
    iso = make_iso(unsigned_e1000_image, tmp_path / "unsigned.iso", build_cache,
                   "--vmlinuz", f"/boot/vmlinuz-{kernel[0]}")
    firmware = qemu_boot.ovmf_args(tmp_path / "vars.fd", secure_boot=True)
    result = qemu_boot.boot_firmware([*firmware, *cdrom(iso, "ide.0"), *E1000], timeout=90)
    report = report_of(result)
    failed = report["failed"]
    assert isinstance(failed, dict)
    # Debian's kernel turns signature enforcement on when it sees Secure Boot.
    assert failed.get("e1000") == KEY_REJECTED, failed
    assert any("Loading of unsigned module is rejected" in line for line in result.lines)
    assert "e1000" not in _netdev_drivers(report)
    loaded = report["loaded"]
    assert isinstance(loaded, list) and {"ahci", "sr_mod"} <= set(loaded)  # signed ones still load


DOWN = "\x1b[B"  # what a serial terminal sends for the down arrow


@pytest.fixture(scope="module")
def waiting_iso(
    all_nics_image: BuiltImage, build_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Default entry `interactive`, no timeout: the menu waits for a key."""
    out = tmp_path_factory.mktemp("waiting") / "rescue.iso"
    with build_env(build_cache, EPOCH):
        assert cli.main(["iso", "--initrd", str(all_nics_image.path), "--timeout", "0", "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    ("firmware", "trigger"),
    [
        pytest.param("bios", "ISOLINUX", marks=pytest.mark.xdist_group("iso-bios")),
        pytest.param("uefi", "Press enter to boot", marks=pytest.mark.xdist_group("iso-uefi")),
    ],
)
def test_menu_is_driven_over_the_serial_port(
    waiting_iso: Path, tmp_path: Path, firmware: str, trigger: str
) -> None:
    """Four times down from `interactive` is `probe` (isolinux's menu.c32 and GRUB alike)."""
    devices = cdrom(waiting_iso) if firmware == "bios" else [
        *qemu_boot.ovmf_args(tmp_path / "vars.fd"), *cdrom(waiting_iso, "ide.0")]
    result = qemu_boot.boot_firmware(
        devices, timeout=60, until="Command line:", replies=[qemu_boot.Reply(trigger, DOWN * 4 + "\r")]
    )
    assert result.reason == "matched", "\n".join(result.lines[-20:])
    assert result.matched_line is not None
    assert result.matched_line.split()[3:6] == ["console=tty0", "console=ttyS0,115200n8", "probe"]
