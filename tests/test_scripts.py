"""The entry scripts (setup/test/demo/.ci/run), the QEMU boot helper and the anchors.

qemu_boot is exercised against a fake `qemu` (a Python script speaking on stdio) so the
console handling is tested without booting; the `qemu` marked tests boot Debian's own
kernel and initramfs-tools image for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from initrd_composer.errors import ComposeError

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_anchors  # noqa: E402
import qemu_boot  # noqa: E402

BASH_SCRIPTS = [SCRIPTS / "setup", SCRIPTS / "test", SCRIPTS / "demo", ROOT / ".ci" / "run"]


def _sh(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv, test only
        [os.fspath(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


# ---------------------------------------------------------------- bash scripts


@pytest.mark.parametrize("script", BASH_SCRIPTS, ids=lambda p: p.name)
def test_bash_scripts_are_executable_and_parse(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    result = _sh("bash", "-n", script)
    assert result.returncode == 0, result.stderr


def test_python_helpers_are_executable() -> None:
    assert os.access(SCRIPTS / "qemu_boot.py", os.X_OK)


def test_setup_check_finds_nothing_left_to_do() -> None:
    # scripts/test runs setup before pytest, so a second look must find everything there.
    result = _sh("bash", SCRIPTS / "setup", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to do" in result.stdout


def test_setup_check_reports_missing_dracut(tmp_path: Path) -> None:
    result = _sh("bash", SCRIPTS / "setup", "--check", env={"DRACUT_CACHE": str(tmp_path)})
    assert result.returncode == 1
    assert f"dracut not unpacked in {tmp_path}" in result.stdout
    assert not list(tmp_path.iterdir()), "--check must not change anything"


def test_setup_rejects_unknown_option() -> None:
    result = _sh("bash", SCRIPTS / "setup", "--frobnicate")
    assert result.returncode == 2
    assert "usage: scripts/setup" in result.stderr


# ---------------------------------------------------------------- qemu_boot: argv, parsing


def test_qemu_argv_is_tcg_serial_stdio_with_devices_last() -> None:
    argv = qemu_boot.qemu_argv(
        Path("/boot/vmlinuz-X"),
        Path("/tmp/initrd.img"),
        "console=ttyS0 probe ip=dhcp",
        ["-device", "e1000,netdev=n0", "-netdev", "user,id=n0"],
        memory_mb=512,
    )
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-m") + 1] == "512"
    assert argv[argv.index("-serial") + 1] == "stdio"
    assert argv[argv.index("-kernel") + 1] == "/boot/vmlinuz-X"
    assert argv[argv.index("-initrd") + 1] == "/tmp/initrd.img"
    # the whole command line is ONE argv element: no shell splitting anywhere
    assert argv[argv.index("-append") + 1] == "console=ttyS0 probe ip=dhcp no_timer_check"
    assert argv[-4:] == ["-device", "e1000,netdev=n0", "-netdev", "user,id=n0"]
    assert "-no-reboot" in argv and "-nodefaults" in argv


def test_ovmf_args_copy_the_vars_template_and_pick_secure_boot(tmp_path: Path) -> None:
    plain = qemu_boot.ovmf_args(tmp_path / "plain.fd")
    secure = qemu_boot.ovmf_args(tmp_path / "secure.fd", secure_boot=True)
    assert (tmp_path / "secure.fd").read_bytes() == (qemu_boot.OVMF_DIR / "OVMF_VARS_4M.ms.fd").read_bytes()
    assert any("OVMF_CODE_4M.fd" in a for a in plain) and "q35" in plain
    assert any("OVMF_CODE_4M.ms.fd" in a for a in secure) and "q35,smm=on" in secure


def test_ovmf_args_name_a_missing_firmware_file(tmp_path: Path) -> None:
    with pytest.raises(qemu_boot.BootError, match=r"OVMF_CODE_4M.ms.fd: no such file \(install ovmf\)"):
        qemu_boot.ovmf_args(tmp_path / "vars.fd", secure_boot=True, ovmf_dir=tmp_path)
    assert not (tmp_path / "vars.fd").exists()


def test_console_reader_joins_chunks_and_drops_carriage_returns() -> None:
    reader = qemu_boot._ConsoleReader()
    assert reader.feed(b"[ 0.1] Linux ver") == []
    assert reader.feed(b"sion\r\nhwrep") == ["[ 0.1] Linux version"]
    assert reader.feed(b"ort: {}\r\n(initramfs) ") == ["hwreport: {}"]
    assert reader.flush() == ["(initramfs) "]
    assert reader.flush() == []


def test_summarize_hwreport() -> None:
    report = {
        "devices": [{"syspath": "/sys/devices/pci0000:00/0000:00:03.0"}] * 3,
        "netdevs": [{"name": "eth0", "mac": "52:54:00:12:34:56", "driver": "e1000"}],
        "blockdevs": [{"name": "sda", "driver": "ahci", "size_bytes": 67108864, "type": "disk"}],
        "missing": ["pci:v00001234d00001111sv*"],
        "timings": {"init_start": 3.1, "probe_end": 4.5},
    }
    out = qemu_boot.summarize_hwreport("hwreport: " + json.dumps(report))
    assert out[0] == "devices: 3"
    assert "netdev eth0 mac=52:54:00:12:34:56 driver=e1000" in out
    assert "blockdev sda type=disk driver=ahci size=67108864" in out
    assert "missing (no module in image): 1" in out
    assert "timings: init_start=3.1, probe_end=4.5" in out
    assert qemu_boot.summarize_hwreport("hwreport: {oops")[0].startswith("hwreport is not valid")


# ---------------------------------------------------------------- qemu_boot against a fake qemu

FAKE_QEMU = """\
import os, sys, time
args = sys.argv[1:]
with open(args[args.index("-pidfile") + 1], "w") as f:
    f.write(str(os.getpid()))
append = args[args.index("-append") + 1]
def say(text, end="\\r\\n"):
    sys.stdout.write(text + end)
    sys.stdout.flush()
say("[    0.000000] Linux version 6.1.0-fake")
if "panic" in append:
    say("[    1.000000] Kernel panic - not syncing: VFS: Unable to mount root fs")
elif "shell" in append:
    say("Spawning shell within the initramfs")
    say("(initramfs) ", end="")
    say("UPTIME_TOP " + sys.stdin.readline().strip())
    say("hwreport: {}")
elif "quit" in append:
    say("reboot: Power down", end="")
    sys.exit(3)
elif "report" in append:
    say("[    2.5] e1000 0000:00:03.0 eth0: (PCI:33MHz:32-bit) 52:54:00:12:34:56")
    say("[    2.6] random kernel noise hwreport: {\\"devices\\": []}")
    say("after the report")
time.sleep(120)
"""


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Path:
    path = tmp_path / "qemu-system-x86_64"
    path.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    path.chmod(0o755)
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initrd.img").write_bytes(b"initrd")
    return path


def _fake_boot(
    qemu: Path, append: str, timeout: float = 20.0, **kw: object
) -> tuple[qemu_boot.BootResult, int]:
    pidfile = qemu.parent / "qemu.pid"
    result = qemu_boot.boot(
        qemu.parent / "vmlinuz",
        qemu.parent / "initrd.img",
        append,
        ["-pidfile", str(pidfile)],
        timeout=timeout,
        qemu=str(qemu),
        **kw,  # type: ignore[arg-type]
    )
    return result, int(pidfile.read_text())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_boot_stops_at_the_wanted_line_and_kills_qemu(fake_qemu: Path) -> None:
    seen: list[str] = []
    result, pid = _fake_boot(fake_qemu, "report", on_line=seen.append)
    assert result.reason == "matched"
    assert result.matched_line == 'hwreport: {"devices": []}'
    assert result.exit is None
    assert result.lines[-1].endswith('hwreport: {"devices": []}')
    assert "after the report" not in result.lines
    assert seen == list(result.lines)
    assert result.elapsed < 15
    assert _gone(pid)


def test_boot_stops_on_kernel_panic(fake_qemu: Path) -> None:
    result, pid = _fake_boot(fake_qemu, "panic")
    assert result.reason == "panic"
    assert result.matched_line is None
    assert "Kernel panic" in result.lines[-1]
    assert _gone(pid)


def test_boot_times_out_and_kills_qemu(fake_qemu: Path) -> None:
    result, pid = _fake_boot(fake_qemu, "hang", timeout=1.5)
    assert result.reason == "timeout"
    assert result.lines == ("[    0.000000] Linux version 6.1.0-fake",)
    assert 1.5 <= result.elapsed < 10
    assert _gone(pid)


def test_boot_reports_qemu_exiting_by_itself(fake_qemu: Path) -> None:
    result, _ = _fake_boot(fake_qemu, "quit")
    assert result.reason == "exited"
    assert result.exit == 3
    assert result.lines[-1] == "reboot: Power down"  # unterminated last line kept


def test_boot_types_replies_into_the_console(fake_qemu: Path) -> None:
    replies = [qemu_boot.Reply("Spawning shell", "12.34 5.67\n")]
    result, _ = _fake_boot(fake_qemu, "shell", replies=replies)
    assert result.reason == "matched"
    assert "(initramfs) UPTIME_TOP 12.34 5.67" in result.lines


def test_boot_missing_kernel_or_qemu_is_a_boot_error(tmp_path: Path, fake_qemu: Path) -> None:
    with pytest.raises(qemu_boot.BootError, match="no such file"):
        qemu_boot.boot(tmp_path / "nope", tmp_path / "initrd.img", "", qemu=str(fake_qemu))
    with pytest.raises(qemu_boot.BootError, match="not found"):
        qemu_boot.boot(
            tmp_path / "vmlinuz", tmp_path / "initrd.img", "", qemu=str(tmp_path / "no-qemu")
        )


# ---------------------------------------------------------------- bench anchors: pure parts

LISTING = [
    ".",
    "usr/lib/modules/6.1.0-56-amd64/kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
    "usr/lib/modules/6.1.0-56-amd64/kernel/drivers/net/virtio_net.ko",
    "usr/lib/modules/6.1.0-56-amd64/kernel/drivers/scsi/sr_mod.ko.xz",
    "usr/lib/modules/6.1.0-56-amd64/kernel/fs/btrfs/btrfs.ko.zst",
    "usr/lib/modules/6.1.0-56-amd64/kernel/drivers/hid/hid-generic.ko",
    "lib/modules/6.1.0-56-amd64/updates/dkms/zfs.ko",
    "usr/lib/modules/6.1.0-56-amd64/modules.dep",
    "usr/bin/kmod",
]


def test_module_paths_names_and_classes() -> None:
    mods = bench_anchors.module_paths(LISTING)
    assert len(mods) == 6
    assert [bench_anchors.module_name(p) for p in mods] == [
        "e1000", "virtio_net", "sr_mod", "btrfs", "hid_generic", "zfs",
    ]  # fmt: skip
    assert [bench_anchors.module_class(p) for p in mods] == [
        "drivers/net", "drivers/net", "drivers/scsi", "fs", "drivers/hid", "updates",
    ]  # fmt: skip


def test_summarize_counts_an_image_listing(tmp_path: Path) -> None:
    image = tmp_path / "x.img"
    image.write_bytes(b"\0" * 1234)
    anchor = bench_anchors.summarize("fake", image, 1.234, LISTING)
    assert anchor.size_bytes == 1234
    assert anchor.wall_seconds == 1.23
    assert anchor.module_count == 6
    assert anchor.module_names[0] == "btrfs"
    assert next(iter(anchor.classes.items())) == ("drivers/net", 2)
    assert json.loads(json.dumps(anchor.as_json()))["image"] == str(image)


def test_with_modules_setting_replaces_or_appends() -> None:
    debian = "# comment MODULES=dep\nMODULES=dep\nBUSYBOX=auto\nCOMPRESS=zstd\n"
    assert bench_anchors.with_modules_setting(debian, "most") == (
        "# comment MODULES=dep\nMODULES=most\nBUSYBOX=auto\nCOMPRESS=zstd\n"
    )
    assert bench_anchors.with_modules_setting("COMPRESS=zstd\n", "most").endswith(
        "COMPRESS=zstd\nMODULES=most\n"
    )


def test_dracut_argv_ignores_host_config_and_adds_nic_drivers(tmp_path: Path) -> None:
    argv = bench_anchors.dracut_argv(
        Path("/cache/dracut"), "6.1.0-56-amd64", tmp_path / "d.img", tmp_path
    )
    assert argv[:2] == ["bash", "/cache/dracut/usr/bin/dracut"]
    assert argv[argv.index("--conf") + 1] == "/dev/null"
    assert argv[argv.index("--confdir") + 1] == str(tmp_path)
    assert argv[argv.index("--kver") + 1] == "6.1.0-56-amd64"
    assert "--no-hostonly" in argv and "--force" in argv
    assert argv[argv.index("--add") + 1] == "kernel-network-modules"
    assert argv[-1] == str(tmp_path / "d.img")
    bare = bench_anchors.dracut_argv(Path("/c"), "k", tmp_path / "d.img", tmp_path, network=False)
    assert "--add" not in bare


def test_parse_udev_timing_ignores_the_echoed_commands() -> None:
    probe = bench_anchors.uptime_probe("TOP")
    lines = [
        "[    3.623437] Run /init as init process",
        "Spawning shell within the initramfs",
        f"(initramfs) {probe}; exit",
        "UPTIME_TOP 5.95 1.80",
        f"(initramfs) {bench_anchors.uptime_probe('PREMOUNT')}",
        "UPTIME_PREMOUNT 8.56 2.10",
    ]
    assert "UPTIME_TOP " not in probe
    timing = bench_anchors.parse_udev_timing(lines, 11.0)
    assert (timing.init_start, timing.top, timing.premount) == (3.623437, 5.95, 8.56)
    assert timing.coldplug_seconds == 2.61
    with pytest.raises(ComposeError, match="lacks PREMOUNT"):
        bench_anchors.parse_udev_timing(lines[:4], 11.0)


# ---------------------------------------------------------------- real boots and builds


@pytest.mark.qemu
def test_debian_initramfs_boots_to_its_break_shell(debian_initrd: tuple[str, Path]) -> None:
    kver, initrd = debian_initrd
    result = qemu_boot.boot(
        Path(f"/boot/vmlinuz-{kver}"),
        initrd,
        "console=ttyS0 break=top",
        timeout=90,
        until="Spawning shell within the initramfs",
    )
    assert result.reason == "matched", result.lines[-5:]
    assert any("Run /init as init process" in line for line in result.lines)
    assert result.elapsed < 90


@pytest.mark.qemu
def test_udev_coldplug_is_measured_in_debian_initramfs(debian_initrd: tuple[str, Path]) -> None:
    timing = bench_anchors.measure_udev_coldplug(debian_initrd[0], initrd=debian_initrd[1], timeout=120)
    assert 0 < timing.init_start < timing.top < timing.premount
    assert 0 < timing.coldplug_seconds < 60


@pytest.mark.oracle
@pytest.mark.root
def test_mkinitramfs_anchor_builds_a_generic_image(tmp_path: Path, kernel: tuple[str, Path]) -> None:
    anchor = bench_anchors.build_mkinitramfs(kernel[0], tmp_path)
    assert anchor.module_count > 300
    assert {"e1000", "ahci", "virtio_net", "sd_mod"} <= set(anchor.module_names)
    assert anchor.classes["drivers/net"] > 50
    assert anchor.size_bytes > 1_000_000


@pytest.mark.oracle
@pytest.mark.root
def test_dracut_anchor_runs_from_the_unpacked_deb(tmp_path: Path, kernel: tuple[str, Path]) -> None:
    anchor = bench_anchors.build_dracut(kernel[0], tmp_path)
    assert anchor.module_count > 300
    assert {"e1000", "ahci", "virtio_net", "sd_mod"} <= set(anchor.module_names)
    assert anchor.classes["drivers/net"] > 50
