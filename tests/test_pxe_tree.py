"""The PXE tree as written: loader configs, append lines, per-MAC files, dnsmasq snippet,
bad input and all-or-nothing output.  The boots themselves are in test_boot_pxe.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from initrd_composer.boot.cmdline import parse_cmdline
from initrd_composer.cli import main as cli
from initrd_composer.errors import ComposeError
from initrd_composer.media.boot_menus import MENU_MODES, MenuSpec
from initrd_composer.media.loader_files import LOADERS, LoaderFiles
from initrd_composer.media.payload import BootPayload, sha256_file
from initrd_composer.media.pxe_tree import (
    MARKER,
    MacEntry,
    PxeOptions,
    dnsmasq_snippet,
    parse_mac,
    write_pxe_tree,
)
from initrd_composer.runner import run
from tests.image_fixtures import BuiltImage, loader_root_without

pytest_plugins = ("tests.image_fixtures",)

MAC = "52:54:00:12:34:56"
STATIC = "eth0:10.0.2.15:255.255.255.0:10.0.2.255:10.0.2.2"
OPTS = PxeOptions(
    nfs="10.0.2.2:/srv/rescue",
    prefix="rescue",
    ipconf="eth0:dhcp",
    macs=(parse_mac(f"{MAC}={STATIC}"), parse_mac("AA-BB-CC-DD-EE-02")),
    server="10.0.2.2",
)
SPEC = MenuSpec(default="probe", timeout_s=1)
TREE_FILES = {
    "vmlinuz", "initrd.img", "pxelinux.0", "ldlinux.c32", "menu.c32", "libutil.c32", "libcom32.c32",
    "pxelinux.cfg/default", "boot.ipxe", "bootx64.efi", "grubx64.efi", "mmx64.efi", "grub/grub.cfg",
    "dnsmasq-pxe.conf",
}  # fmt: skip
MAC_FILES = {"pxelinux.cfg/01-52-54-00-12-34-56", "pxelinux.cfg/01-aa-bb-cc-dd-ee-02"}


@pytest.fixture
def payload(tmp_path: Path) -> BootPayload:
    src = tmp_path / "src"
    src.mkdir()
    (src / "vmlinuz").write_bytes(b"MZ fake kernel" * 100)
    (src / "initrd.img").write_bytes(os.urandom(300_000))
    return BootPayload("6.1.0-test", src / "vmlinuz", src / "initrd.img", sha256_file(src / "initrd.img"))


@pytest.fixture
def tree(tmp_path: Path, payload: BootPayload) -> Path:
    out = tmp_path / "tftp"
    report = write_pxe_tree(out, payload, SPEC, LoaderFiles(), OPTS)
    assert report.path == out
    assert report.dnsmasq_conf == out / "dnsmasq-pxe.conf"
    assert report.cmdline == "console=tty0 console=ttyS0,115200n8 probe " + " ".join(OPTS.words())
    assert set(report.files) == TREE_FILES | MAC_FILES
    return out


def syslinux_labels(text: str) -> tuple[str, dict[str, dict[str, str]]]:
    """(DEFAULT, {label: {KEYWORD: value}}) the way pxelinux reads its config."""
    default, current = "", None
    labels: dict[str, dict[str, str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key.upper() == "DEFAULT":
            default = value
        elif key.upper() == "LABEL":
            current = labels.setdefault(value, {})
        elif current is not None:
            current[key.upper()] = value
    return default, labels


def test_tree_holds_the_payload_and_the_systems_loaders(tree: Path, payload: BootPayload) -> None:
    found = {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()}
    assert found == TREE_FILES | MAC_FILES | {MARKER}
    assert sha256_file(tree / "initrd.img") == payload.initrd_sha256
    assert (tree / "vmlinuz").read_bytes() == payload.vmlinuz.read_bytes()
    signed = {"bootx64.efi": "shimx64.efi", "grubx64.efi": "grubnetx64.efi", "mmx64.efi": "mmx64.efi"}
    for name, loader in {**signed, "pxelinux.0": "pxelinux.0", "ldlinux.c32": "ldlinux.c32"}.items():
        assert (tree / name).read_bytes() == (Path("/") / LOADERS[loader][0]).read_bytes(), name
    # The TFTP server reads as its own user: nothing may stay mkdtemp's 0700.
    for path in [tree, *tree.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
    marker = json.loads((tree / MARKER).read_text())
    assert marker["initrd_sha256"] == payload.initrd_sha256
    assert set(marker["files"]) == TREE_FILES | MAC_FILES


def _expect_words(words: list[str], mode: str, ipconf: str) -> None:
    cfg = parse_cmdline(" ".join(words))
    assert cfg.problems == () and cfg.unknown == (), words
    assert (cfg.mode, cfg.pxe, cfg.prefix, cfg.nfsmount) == (mode, True, "rescue", "10.0.2.2:/srv/rescue")
    expected = parse_cmdline(f"ipconf={ipconf}").ipconf
    assert cfg.ipconf == expected and expected is not None
    assert words[:2] == ["console=tty0", "console=ttyS0,115200n8"], "serial console last: /dev/console"


def test_pxelinux_default_and_per_mac_files(tree: Path) -> None:
    for name, ipconf in [("default", "eth0:dhcp"), ("01-52-54-00-12-34-56", STATIC),
                         ("01-aa-bb-cc-dd-ee-02", "eth0:dhcp")]:  # fmt: skip
        text = (tree / "pxelinux.cfg" / name).read_text()
        assert text.startswith("SERIAL 0 115200\n"), "pxelinux mirrors to the port only after SERIAL"
        default, labels = syslinux_labels(text)
        assert default == "probe" and set(labels) == set(MENU_MODES)
        assert "TIMEOUT 10\n" in text  # tenths of a second
        for mode, entry in labels.items():
            assert (tree / entry["KERNEL"]).is_file() and (tree / entry["INITRD"]).is_file()
            assert entry["IPAPPEND"] == "2"
            words = entry["APPEND"].split()
            _expect_words(words, mode, ipconf)
            # What pxelinux adds for IPAPPEND 2 is a BOOTIF /init accepts.
            assert parse_cmdline(" ".join([*words, "BOOTIF=01-52-54-00-12-34-56"])).bootif == MAC


def test_ipxe_script_and_grub_cfg_pass_the_booting_mac(tree: Path) -> None:
    script = (tree / "boot.ipxe").read_text()
    assert script.startswith("#!ipxe\n")
    labels = set(re.findall(r"^:(\w+)$", script, re.M))
    assert labels == set(MENU_MODES)
    assert "choose --default probe --timeout 1000 mode" in script
    kernels = re.findall(r"^kernel (\S+) (.*)$", script, re.M)
    assert len(kernels) == len(MENU_MODES)
    for (kernel, rest), mode in zip(kernels, re.findall(r"^:(\w+)$", script, re.M), strict=True):
        assert (tree / kernel).is_file()
        # iPXE expands ${netX/mac:hexhyp} to 52-54-00-12-34-56.
        words = rest.replace("${netX/mac:hexhyp}", MAC.replace(":", "-")).split()
        assert words[0] == "initrd=initrd.img"
        _expect_words(words[1:-1], mode, "eth0:dhcp")
        assert parse_cmdline(" ".join(words)).bootif == MAC
    assert all((tree / f).is_file() for f in re.findall(r"^initrd (\S+)$", script, re.M))

    grub = (tree / "grub/grub.cfg").read_text()
    ids = re.findall(r"--id (\w+) \{", grub)
    assert set(ids) == set(MENU_MODES) and "set default=probe" in grub and "set timeout=1" in grub
    for mode, line in zip(ids, re.findall(r"^\s+linux (.*)$", grub, re.M), strict=True):
        kernel, *words = line.split()
        assert kernel == "$cmdpath/vmlinuz"  # GRUB's TFTP directory of shim and itself
        expanded = " ".join(words).replace("${net_default_mac}", MAC).split()
        _expect_words(expanded[:-1], mode, "eth0:dhcp")
        assert parse_cmdline(" ".join(expanded)).bootif == MAC
    assert re.findall(r"^\s+initrd (.*)$", grub, re.M) == ["$cmdpath/initrd.img"] * len(MENU_MODES)
    checked = run(["grub-script-check", tree / "grub/grub.cfg"], check=False)  # GRUB's own parser
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _dnsmasq_test(conf: Path) -> subprocess.CompletedProcess[bytes]:
    return run(["dnsmasq", "--test", f"--conf-file={conf}"], check=False)


def test_dnsmasq_snippet_passes_dnsmasqs_own_check(tree: Path, tmp_path: Path) -> None:
    conf = tree / "dnsmasq-pxe.conf"
    text = conf.read_text()
    checked = _dnsmasq_test(conf)
    assert checked.returncode == 0, checked.stderr
    assert f"tftp-root={tree}\n" in text and "dhcp-range=10.0.2.2,proxy\n" in text
    assert 'x86PC,"initrd-composer rescue (BIOS)",pxelinux,10.0.2.2\n' in text  # PXE adds .0
    for csa in ("X86-64_EFI", "BC_EFI"):  # client-arch 7 and 9
        assert f'tag:!ipxe,{csa},"initrd-composer rescue (UEFI)",bootx64.efi,10.0.2.2\n' in text
    assert "dhcp-userclass=set:ipxe,iPXE\n" in text and "dhcp-boot=tag:ipxe,boot.ipxe,,10.0.2.2\n" in text
    # The check is real: a broken line fails it.
    broken = tmp_path / "broken.conf"
    broken.write_text(text + "pxe-service=nonsense\n")
    assert _dnsmasq_test(broken).returncode != 0
    # Without --server the proxy range is left for the user to fill in; still valid.
    bare = tmp_path / "bare.conf"
    bare.write_text(dnsmasq_snippet(tree, None))
    assert _dnsmasq_test(bare).returncode == 0 and "\n#dhcp-range=" in bare.read_text()


def _run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--nfs", "10.0.2.2/srv", "bad --nfs"),
        ("--nfs", "10.0.2.2:srv/rescue", "bad --nfs"),
        ("--url", "nfs://x/y", "bad --url"),
        ("--ipconf", "eth0:10.0.0.1", "bad --ipconf"),
        ("--ipconf", "eth0:dhcp extra", "cannot go on a kernel command line"),
        ("--mac", "52:54:00:12:34", "bad --mac"),
        ("--mac", "52:54:00:12:34:56=eth0", "bad --mac"),
        ("--prefix", "a/b", "bad --prefix"),
        ("--server", "tftp.example", "bad --server"),
    ],
)
def test_bad_options_are_one_line_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str, value: str, message: str
) -> None:
    out = tmp_path / "tree"
    argv = ["pxe", "-o", str(out), "--initrd", str(tmp_path / "no.img"), option, value]
    status, _, err = _run_cli(capsys, argv)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2 and message in lines[0] and lines[1].startswith("compose-initrd: hint:"), err
    assert list(tmp_path.iterdir()) == []


def test_conflicting_and_repeated_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ["pxe", "-o", str(tmp_path / "t"), "--initrd", str(tmp_path / "none.img")]
    status, _, err = _run_cli(capsys, [*base, "--nfs", "s:/p", "--url", "http://s/p"])
    assert status == 2 and "--nfs and --url" in err
    twice = ["--mac", "aa:bb:cc:dd:ee:01", "--mac", "AA-BB-CC-DD-EE-01=eth1:dhcp"]
    status, _, err = _run_cli(capsys, [*base, *twice])
    assert status == 2 and "given twice" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_pxelinux_fails_before_any_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, host_nic_image: BuiltImage
) -> None:
    root = loader_root_without(tmp_path / "root", "pxelinux.0")
    work = tmp_path / "work"
    work.mkdir()
    status, _, err = _run_cli(capsys, ["pxe", "-o", str(work / "tree"), "--initrd", str(host_nic_image.path),
                                       "--loader-root", str(root)])  # fmt: skip
    assert status == 1
    assert "pxelinux.0 is missing" in err and "apt-get install pxelinux" in err
    assert list(work.iterdir()) == []


def test_cli_places_the_initrd_and_prints_its_sha256(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, host_nic_image: BuiltImage
) -> None:
    out = tmp_path / "tree"
    status, stdout, _ = _run_cli(capsys, ["pxe", "-o", str(out), "--initrd", str(host_nic_image.path),
                                          "--nfs", "192.168.1.5:/srv/rescue", "--prefix", "web01",
                                          "--mac", "aa:bb:cc:dd:ee:ff", "--serial", "none"])  # fmt: skip
    assert status == 0
    digest = hashlib.sha256(host_nic_image.path.read_bytes()).hexdigest()
    assert f"sha256 {digest}  initrd.img" in stdout
    assert sha256_file(out / "initrd.img") == digest
    assert (out / "vmlinuz").read_bytes() == Path(f"/boot/vmlinuz-{host_nic_image.version}").read_bytes()
    _, labels = syslinux_labels((out / "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff").read_text())
    assert labels["interactive"]["APPEND"] == "interactive pxe prefix=web01 nfsmount=192.168.1.5:/srv/rescue"


def test_rewrites_its_own_tree_but_nothing_else(tmp_path: Path, tree: Path, payload: BootPayload) -> None:
    # Our previous tree is replaced: a --mac given before and not now disappears.
    write_pxe_tree(tree, payload, SPEC, LoaderFiles(), PxeOptions(url="http://10.0.2.2/rescue"))
    assert not (tree / "pxelinux.cfg/01-52-54-00-12-34-56").exists()
    assert "url=http://10.0.2.2/rescue" in (tree / "pxelinux.cfg/default").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "tftp"], "no .tmp/.old left beside it"
    # A file the user put into the tree: refuse, change nothing.
    (tree / "grub/custom.cfg").write_text("menuentry x {}\n")
    with pytest.raises(ComposeError, match=r"files compose-initrd did not write \(grub/custom\.cfg\)"):
        write_pxe_tree(tree, payload, SPEC, LoaderFiles(), OPTS)
    assert "url=" in (tree / "pxelinux.cfg/default").read_text()
    # Somebody else's non-empty directory (a TFTP root): refused; an empty one is fine.
    foreign = tmp_path / "srv-tftp"
    (foreign / "debian-installer").mkdir(parents=True)
    (foreign / "debian-installer/pxelinux.0").write_bytes(b"x")
    with pytest.raises(ComposeError, match="not a tree written by compose-initrd pxe") as info:
        write_pxe_tree(foreign, payload, SPEC, LoaderFiles(), OPTS)
    assert "subdirectory" in info.value.hint
    empty = tmp_path / "empty"
    empty.mkdir()
    write_pxe_tree(empty, payload, SPEC, LoaderFiles(), OPTS)
    assert (empty / MARKER).is_file()


def test_a_failed_write_leaves_no_tree(tmp_path: Path, payload: BootPayload) -> None:
    # The initrd changes between hashing and copying: the copy is refused, nothing stays.
    changed = BootPayload(payload.kernel_version, payload.vmlinuz, payload.initrd, "0" * 64)
    with pytest.raises(ComposeError, match="changed while it was copied"):
        write_pxe_tree(tmp_path / "tree", changed, SPEC, LoaderFiles(), OPTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    with pytest.raises(ComposeError, match="no directory"):
        write_pxe_tree(tmp_path / "missing/tree", payload, SPEC, LoaderFiles(), OPTS)


def test_mac_entries_normalise() -> None:
    assert parse_mac("AA-BB-CC-DD-EE-FF") == MacEntry("01-aa-bb-cc-dd-ee-ff", None)
    assert parse_mac("aa:bb:cc:dd:ee:ff=eth1:dhcp") == MacEntry("01-aa-bb-cc-dd-ee-ff", "eth1:dhcp")
    assert OPTS.words() == ("pxe", "prefix=rescue", "ipconf=eth0:dhcp", "nfsmount=10.0.2.2:/srv/rescue")
    assert PxeOptions().words() == ("pxe",)
