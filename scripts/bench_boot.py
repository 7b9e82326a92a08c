"""scripts/bench's boot timings: QEMU boots of our image (`probe`) alternated with boots of
Debian's /boot/initrd.img-KVER (break=top,premount) on one fixed machine, so host noise
hits both alike: how long our probe takes against udev's coldplug + settle."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import bench_anchors
import qemu_boot
from bench_common import MIB, display_path, log, ratio

from initrd_composer.errors import ComposeError

# The one QEMU machine both initrds boot on: an e1000 NIC on user networking and an AHCI disk.
BOOT_MEMORY_MB = qemu_boot.DEFAULT_MEMORY_MB
BOOT_DISK_MIB = 64
BOOT_TIMEOUT = 300.0  # TCG on a busy 2-core host: a boot normally takes 15 s
OUR_APPEND = "console=ttyS0 probe"


@dataclass(frozen=True)
class OurBoot:
    """One boot of our image with `probe`: guest uptimes (seconds) and host wall time."""

    kernel_init: float  # the kernel's "Run /init as init process" stamp
    init_start: float  # hwreport timings: /init running (Python up, /proc mounted)
    probe_end: float  # hwreport timings: coldplug done, modules loaded
    wall_seconds: float  # qemu start to the hwreport line

    @property
    def probe_seconds(self) -> float:
        return round(self.probe_end - self.init_start, 2)


@dataclass(frozen=True)
class BootTimings:
    """Our boots and Debian's initramfs-tools boots, alternated on the same QEMU machine."""

    devices: tuple[str, ...]  # the qemu device arguments both boots got
    memory_mb: int
    ours_image: str
    ours_bytes: int
    debian_image: str
    debian_bytes: int
    ours: tuple[OurBoot, ...]
    debian: tuple[bench_anchors.UdevTiming, ...]
    modaliases: tuple[str, ...]  # of the machine, from our first boot's hwreport

    @property
    def probe_ratio(self) -> float:
        """Median probe duration / median udev coldplug+settle duration."""
        return ratio(median(b.probe_seconds for b in self.ours),
                     median(d.coldplug_seconds for d in self.debian))  # fmt: skip

    @property
    def end_ratio(self) -> float:
        """Median uptime at our probe end / median uptime at Debian's premount break."""
        return ratio(median(b.probe_end for b in self.ours), median(d.premount for d in self.debian))


# ---------------------------------------------------------------- console and hwreport


_RUN_INIT = re.compile(r"^\[\s*(\d+\.\d+)\] Run /init as init process")


def parse_hwreport(line: str) -> dict[str, Any]:
    """The JSON object of a `hwreport: {json}` console line (the /init contract)."""
    try:
        report = json.loads(line.split("hwreport:", 1)[1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise ComposeError(f"not a hwreport line: {line[:80]!r}", "the image's /init is broken") from exc
    if not isinstance(report, dict):
        raise ComposeError(f"hwreport is not a JSON object: {line[:80]!r}", "the image's /init is broken")
    return report


def parse_our_boot(lines: Sequence[str], report: Mapping[str, Any], wall_seconds: float) -> OurBoot:
    """OurBoot from a console transcript (the kernel's /init stamp) and its hwreport timings."""
    stamps = [float(m.group(1)) for line in lines if (m := _RUN_INIT.match(line))]
    timings = report.get("timings")
    if not isinstance(timings, dict):
        raise ComposeError("hwreport has no timings object", "the image's /init predates boot timings")
    start, end = timings.get("init_start"), timings.get("probe_end")
    if not stamps or not isinstance(start, int | float) or not isinstance(end, int | float):
        raise ComposeError(
            f"boot transcript lacks a /init stamp or hwreport timings ({timings})",
            "boot without `quiet`; the hwreport needs timings.init_start and timings.probe_end",
        )
    return OurBoot(stamps[0], float(start), float(end), round(wall_seconds, 2))


def modaliases_of(report: Mapping[str, Any]) -> tuple[str, ...]:
    """The distinct non-empty modaliases of a hwreport's devices, sorted."""
    devices = report.get("devices") or []
    return tuple(sorted({d["modalias"] for d in devices if isinstance(d, dict) and d.get("modalias")}))


# ---------------------------------------------------------------- booting


def boot_devices(disk: Path) -> list[str]:
    return [
        "-netdev", "user,id=n0", "-device", "e1000,netdev=n0",
        "-device", "ahci,id=ahci0",
        "-drive", f"if=none,id=d0,file={disk},format=raw", "-device", "ide-hd,drive=d0,bus=ahci0.0",
    ]  # fmt: skip


def boot_disk(out_dir: Path) -> Path:
    """A sparse, blank BOOT_DISK_MIB raw disk, recreated each run so both boots see the same bytes."""
    disk = out_dir / "boot-disk.img"
    with disk.open("wb") as f:
        f.truncate(BOOT_DISK_MIB * MIB)
    return disk


def boot_ours(kernel: Path, image: Path, devices: Sequence[str]) -> tuple[OurBoot, dict[str, Any]]:
    """Boot our image with `probe` until its hwreport line: the timings and the report."""
    try:
        result = qemu_boot.boot(kernel, image, OUR_APPEND, devices, timeout=BOOT_TIMEOUT,
                                memory_mb=BOOT_MEMORY_MB)  # fmt: skip
    except qemu_boot.BootError as exc:
        raise ComposeError(str(exc), "install qemu-system-x86 (scripts/setup)") from exc
    if result.matched_line is None:
        raise ComposeError(
            f"boot of {image} ended by {result.reason} after {result.elapsed:.0f}s without a hwreport line",
            f"watch it: scripts/qemu_boot.py --kernel {kernel} --initrd {image} --append '{OUR_APPEND}'",
        )
    report = parse_hwreport(result.matched_line)
    return parse_our_boot(result.lines, report, result.elapsed), report


def measure_boots(kver: str, image: Path, out_dir: Path, runs: int) -> BootTimings:
    """`runs` boots of our image and of Debian's initrd, alternated so host noise hits both."""
    kernel, debian = Path(f"/boot/vmlinuz-{kver}"), Path(f"/boot/initrd.img-{kver}")
    for path in (kernel, debian):
        if not path.is_file():
            raise ComposeError(f"{path}: not found", f"boot timings need it: update-initramfs -c -k {kver}")
    disk = boot_disk(out_dir)
    devices = boot_devices(disk)
    ours: list[OurBoot] = []
    theirs: list[bench_anchors.UdevTiming] = []
    reports: list[dict[str, Any]] = []
    for i in range(runs):
        boot, report = boot_ours(kernel, image, devices)
        ours.append(boot)
        reports.append(report)
        log(f"boot {i + 1}, ours: probe {boot.init_start:.2f}-{boot.probe_end:.2f} s uptime")
        theirs.append(bench_anchors.measure_udev_coldplug(kver, initrd=debian, devices=devices,
                                                          timeout=BOOT_TIMEOUT))  # fmt: skip
        log(f"boot {i + 1}, Debian: coldplug {theirs[-1].top:.2f}-{theirs[-1].premount:.2f} s uptime")
    return BootTimings(
        devices=tuple(boot_devices(Path(display_path(disk)))),
        memory_mb=BOOT_MEMORY_MB,
        ours_image=display_path(image), ours_bytes=image.stat().st_size,
        debian_image=str(debian), debian_bytes=debian.stat().st_size,
        ours=tuple(ours), debian=tuple(theirs), modaliases=modaliases_of(reports[0]),
    )  # fmt: skip
