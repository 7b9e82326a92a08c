"""The PXE tree boots over the network: QEMU's built-in TFTP server serves the tree the
`pxe` verb wrote, and each loader path reaches /init's `hwreport:` line with the command
line the tree wrote (plus the booting NIC's MAC as BOOTIF=).

- BIOS: SeaBIOS, the e1000's iPXE option ROM as PXE stack -> pxelinux.0 -> its per-MAC file.
- BIOS: the same iPXE ROM fetching boot.ipxe directly (what dnsmasq's iPXE rule sends).
- UEFI with Secure Boot enforced: OVMF's own PXE over virtio-net -> shim -> grubnetx64 ->
  grub/grub.cfg -> the Debian-signed kernel, locked down.  The NIC's option ROM is turned
  off (romfile=): with the e1000's iPXE EFI ROM, iPXE answers shim's TFTP size query
  wrongly and shim refuses grubx64.efi ("Malformed binary after Attribute Certificate
  Table"), a known shim-on-iPXE problem that real firmware PXE stacks do not have.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.image_fixtures import E1000_MODALIAS, compose, fake_sysfs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures",)
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("pxe")]

MAC = "52:54:00:12:34:56"
STATIC = "eth0:10.0.2.15:255.255.255.0:10.0.2.255:10.0.2.2"
NFS = "10.0.2.2:/srv/rescue"
# /init's reading of ipconf= (the hwreport's cmdline.params.ipconf): the tree's and the machine's own
IPCONF_DHCP = {"device": "eth0", "dhcp": True, "address": "", "netmask": "", "broadcast": "", "gateway": ""}
IPCONF_STATIC = {"device": "eth0", "dhcp": False, "address": "10.0.2.15", "netmask": "255.255.255.0",
                 "broadcast": "10.0.2.255", "gateway": "10.0.2.2"}
TIMEOUT_S = 90.0  # measured: 17-27 s each with a 33 MiB initrd over slirp's TFTP


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, build_cache: Path, kernel: tuple[str, Path]) -> Path:
    """Built by the verb itself, for a host whose NIC is an e1000, plus virtio_net for the
    UEFI boot (not --all-nics: a smaller initrd is a shorter TFTP transfer)."""
    base = tmp_path_factory.mktemp("pxe")
    sysfs = fake_sysfs(base / "sys", {"eth0": E1000_MODALIAS})
    argv = ["pxe", "-o", str(base / "tftp"), "--kernel", kernel[0], "--sys-root", str(sysfs),
            "--add-modules", "virtio_net", "--default-mode", "probe", "--timeout", "1",
            "--nfs", NFS, "--prefix", "rescue", "--ipconf", "eth0:dhcp",
            "--append", "media_timeout=2",  # no NFS server here: the media stage gives up fast
            "--mac", f"{MAC}={STATIC}"]  # fmt: skip
    assert compose(argv, build_cache) == 0
    return base / "tftp"


def _net(tree: Path, bootfile: str, nic: str) -> list[str]:
    return ["-netdev", f"user,id=n0,tftp={tree},bootfile={bootfile}",
            "-device", f"{nic},netdev=n0,mac={MAC},bootindex=1"]  # fmt: skip


def _kernel_words(result: qemu_boot.BootResult) -> list[str]:
    lines = [line for line in result.lines if "] Command line: " in line]
    assert lines, "the kernel printed no command line"
    return lines[0].split("] Command line: ", 1)[1].split()


def _check_boot(
    result: qemu_boot.BootResult, entry_words: list[str], loader_words: set[str], ipconf: dict[str, Any]
) -> None:
    """The kernel got the entry's words in order plus only what the loader adds; /init
    understood all of them (its hwreport's `cmdline` says what it parsed, with nothing
    unknown or malformed) and saw the NIC that booted."""
    assert result.reason == "matched", "\n".join(result.lines[-40:])
    words = _kernel_words(result)
    start = words.index(entry_words[0])
    assert words[start : start + len(entry_words)] == entry_words
    assert set(words) - set(entry_words) == loader_words
    complaints = [line for line in result.lines if "initrd-composer:" in line and "kernel parameter" in line]
    assert complaints == []
    assert result.matched_line is not None
    report = json.loads(result.matched_line.split(":", 1)[1])
    parsed = report["cmdline"]
    assert (parsed["mode"], parsed["unknown"], parsed["problems"]) == ("probe", [], []), parsed
    assert parsed["params"] == {
        "pxe": True, "prefix": "rescue", "ipconf": ipconf, "nfsmount": NFS, "bootif": MAC, "media_timeout": 2
    }, parsed
    assert MAC in [dev["mac"] for dev in report["netdevs"]], report["netdevs"]


def _append(cfg: Path, label: str) -> list[str]:
    lines = cfg.read_text().splitlines()
    at = lines.index(f"LABEL {label}")
    return next(line.split(None, 1)[1] for line in lines[at:] if line.strip().startswith("APPEND")).split()


def test_bios_pxelinux_boots_the_per_mac_entry(tree: Path) -> None:
    result = qemu_boot.boot_firmware(_net(tree, "pxelinux.0", "e1000"), timeout=TIMEOUT_S)
    entry = _append(tree / "pxelinux.cfg/01-52-54-00-12-34-56", "probe")
    assert f"ipconf={STATIC}" in entry  # the machine's own file, not `default`
    loader = {"BOOT_IMAGE=vmlinuz", "initrd=initrd.img", "BOOTIF=01-52-54-00-12-34-56"}
    _check_boot(result, entry, loader, IPCONF_STATIC)
    print(f"pxe bios pxelinux: hwreport after {result.elapsed:.1f} s")


def test_bios_ipxe_script(tree: Path) -> None:
    result = qemu_boot.boot_firmware(_net(tree, "boot.ipxe", "e1000"), timeout=TIMEOUT_S)
    script = (tree / "boot.ipxe").read_text().splitlines()
    kernel = script[script.index(":probe") + 1].split()
    assert kernel[:3] == ["kernel", "vmlinuz", "initrd=initrd.img"]
    assert "ipconf=eth0:dhcp" in kernel  # the tree's own: iPXE has no per-machine file
    _check_boot(result, kernel[3:-1], {"initrd=initrd.img", "BOOTIF=01-52-54-00-12-34-56"}, IPCONF_DHCP)
    print(f"pxe bios ipxe: hwreport after {result.elapsed:.1f} s")


def test_uefi_secure_boot_shim_grub(tree: Path, tmp_path: Path) -> None:
    firmware = qemu_boot.ovmf_args(tmp_path / "vars.fd", secure_boot=True)
    net = _net(tree, "bootx64.efi", "virtio-net-pci,romfile=")
    result = qemu_boot.boot_firmware([*firmware, *net], timeout=TIMEOUT_S)
    grub = (tree / "grub/grub.cfg").read_text().splitlines()
    entry = next(line for line in grub if line.strip().startswith("linux ") and " probe " in line).split()
    assert entry[1] == "$cmdpath/vmlinuz" and entry[-1] == "BOOTIF=01-${net_default_mac}"
    assert "ipconf=eth0:dhcp" in entry
    _check_boot(result, entry[2:-1], {"BOOT_IMAGE=(tftp,10.0.2.2)/vmlinuz", f"BOOTIF=01-{MAC}"}, IPCONF_DHCP)
    assert any("secureboot: Secure boot enabled" in line for line in result.lines)
    assert any("Kernel is locked down from EFI Secure Boot" in line for line in result.lines)
    print(f"pxe uefi secure boot: hwreport after {result.elapsed:.1f} s")
