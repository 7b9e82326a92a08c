"""scripts/bench's NFS media over DHCP: our image against initramfs-tools' NFS boot.

Both boot on bench_boot's QEMU machine (e1000 on user networking, so DHCP comes from QEMU's
built-in server) and mount the same export from nfs-ganesha on the host's loopback
(scripts/nfs_server.py, NFS 3 and 4: initramfs-tools' klibc nfsmount speaks only v2/v3).

- Ours: `console=ttyS0 probe ip=dhcp nfsmount=10.0.2.2:/EXPORT`; the network stage runs
  DHCP, the media stage mounts the export (newest NFS version first) and the hwreport follows.
  Marks: the kernel's printk stamp of /init's log line `nfs: SPEC mounted with NFS V on ...`
  (written to /dev/kmsg once the share is mounted and listed), against the hwreport's
  timings.probe_end; the network and media sections' own `seconds` are kept as well.
- initramfs-tools: `console=ttyS0 boot=nfs ip=dhcp nfsroot=10.0.2.2:/EXPORT
  break=premount,bottom`; /proc/uptime read at the premount break (udev coldplug done, the
  counterpart of our probe end) and at the bottom break (the root is mounted on /root, after
  configure_networking's klibc ipconfig and nfsmount), with `ls /root` and /root's mount line.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import bench_anchors
import bench_boot
import nfs_server
import qemu_boot
from bench_common import display_path, log, ratio, save_console

from initrd_composer.errors import ComposeError

PSEUDO = "/bench-nfs"
SERVER = "10.0.2.2"
MARKER = "bench-nfs-marker"  # the one file in the export; both sides must list it
OURS_APPEND = f"console=ttyS0 probe ip=dhcp nfsmount={SERVER}:{PSEUDO}"
DEBIAN_APPEND = f"console=ttyS0 boot=nfs ip=dhcp nfsroot={SERVER}:{PSEUDO} break=premount,bottom"
PORT_WAIT_S = 900.0  # another NFS server on port 2049 (a test elsewhere on the machine): wait this long
_SHELL = "Spawning shell within the initramfs"
_RUN_INIT = re.compile(r"^\[\s*(\d+\.\d+)\] Run /init as init process")
_MOUNTED = re.compile(r"^\[\s*(\d+\.\d+)\] initrd-composer: nfs: (\S+) mounted with NFS (\S+) on ")


@dataclass(frozen=True)
class OurNfsBoot:
    """Guest uptimes (s) of one boot of our image with nfsmount=, and host wall time."""

    kernel_init: float  # the kernel's "Run /init as init process" stamp
    probe_end: float  # hwreport timings.probe_end
    mounted: float  # printk stamp of the finder's "mounted with NFS" line
    network_seconds: float  # the hwreport's network section
    media_seconds: float  # the hwreport's media section
    version: str  # the NFS version that mounted
    wall_seconds: float  # qemu start to the hwreport line

    @property
    def span(self) -> float:
        """Probe end to the share mounted: the network and media stages, and what lies between."""
        return round(self.mounted - self.probe_end, 2)


@dataclass(frozen=True)
class DebianNfsBoot:
    """Guest uptimes (s) of one initramfs-tools NFS boot, and host wall time."""

    init_start: float  # the kernel's "Run /init as init process" stamp
    premount: float  # the break=premount shell: udev coldplug and settle done
    mounted: float  # the break=bottom shell: the root is on /root
    mount_line: str  # /root's line of /proc/mounts (which options)
    version: str  # its vers=
    ipconfig_timeouts: int  # klibc ipconfig rounds that got no DHCP answer ("no response after")
    wall_seconds: float  # qemu start to the bottom shell's answer

    @property
    def span(self) -> float:
        """Premount break to bottom break: init-premount, ipconfig's DHCP and nfsmount."""
        return round(self.mounted - self.premount, 2)


@dataclass(frozen=True)
class NfsTimings:
    devices: tuple[str, ...]
    memory_mb: int
    ours_image: str
    ours_bytes: int
    debian_image: str
    debian_bytes: int
    debian_label: str  # how that image was made
    ours_append: str
    debian_append: str
    server: str  # what served the export
    ours: tuple[OurNfsBoot, ...]
    debian: tuple[DebianNfsBoot, ...]

    @property
    def span_ratio(self) -> float:
        """Median (probe end -> mounted) of ours / median (premount -> mounted) of Debian's."""
        return ratio(median(b.span for b in self.ours), median(d.span for d in self.debian))

    @property
    def mounted_ratio(self) -> float:
        """Median uptime at our share mounted / median uptime at Debian's root mounted."""
        return ratio(median(b.mounted for b in self.ours), median(d.mounted for d in self.debian))


# ---------------------------------------------------------------- console parsing


def parse_our_nfs_boot(lines: Sequence[str], report: Mapping[str, Any], wall_seconds: float) -> OurNfsBoot:
    """OurNfsBoot from the console transcript and the hwreport of a probe boot with nfsmount=."""
    timing = bench_boot.parse_our_boot(lines, report, wall_seconds)
    media, network = report.get("media"), report.get("network")
    if not isinstance(media, dict) or not media.get("ok") or not isinstance(network, dict):
        detail = media.get("error") if isinstance(media, dict) else "no media section"
        raise ComposeError(f"our NFS boot found no media: {detail}", "run scripts/bench --only nfs and read "
                           "the console: the network and media stages print `stage:` lines")  # fmt: skip
    listing = (media.get("data") or {}).get("listing") or []
    if MARKER not in listing:
        raise ComposeError(f"our NFS boot mounted a share without {MARKER} (it lists {listing[:5]})",
                           "another NFS server answered on port 2049")  # fmt: skip
    stamps = [(float(m.group(1)), m.group(3)) for line in lines if (m := _MOUNTED.match(line))]
    if not stamps:
        raise ComposeError("our NFS boot printed no stamped `nfs: ... mounted with NFS` line",
                           "boot without `quiet`: the NFS finder logs it through /dev/kmsg")  # fmt: skip
    mounted, version = stamps[0]
    return OurNfsBoot(timing.kernel_init, timing.probe_end, mounted, float(network["seconds"]),
                      float(media["seconds"]), version, timing.wall_seconds)  # fmt: skip


def bottom_probe() -> str:
    """Shell input for the bottom break: uptime, /root's listing and mount line, on one line
    (the quotes keep the tty's echo of the command from matching UPTIME_BOTTOM)."""
    return 'echo UPTIME_"BOTTOM" $(cat /proc/uptime) LS $(ls /root) MOUNT $(grep " /root " /proc/mounts)\n'


def parse_debian_nfs_boot(lines: Sequence[str], wall_seconds: float) -> DebianNfsBoot:
    """DebianNfsBoot from an initramfs-tools console transcript with both breaks answered."""
    init = next((float(m.group(1)) for line in lines if (m := _RUN_INIT.match(line))), None)
    premount = next((float(line.split()[1]) for line in lines if line.startswith("UPTIME_PREMOUNT ")), None)
    bottom = next((line for line in lines if line.startswith("UPTIME_BOTTOM ")), None)
    if init is None or premount is None or bottom is None:
        raise ComposeError("initramfs-tools NFS boot transcript lacks the /init stamp or a break's uptime",
                           "did boot=nfs reach break=bottom? The NFS mount may have failed")  # fmt: skip
    words = bottom.split()
    listing = words[words.index("LS") + 1 : words.index("MOUNT")]
    mount_line = " ".join(words[words.index("MOUNT") + 1 :])
    version = re.search(r"\bvers=([0-9.]+)", mount_line)
    if MARKER not in listing or version is None:
        raise ComposeError(f"initramfs-tools did not mount the export on /root ({bottom!r})",
                           "another NFS server answered on port 2049, or nfsmount failed")  # fmt: skip
    timeouts = sum(1 for line in lines if line.startswith("IP-Config: no response after"))
    return DebianNfsBoot(init, premount, float(words[1]), mount_line, version.group(1), timeouts,
                         round(wall_seconds, 2))  # fmt: skip


# ---------------------------------------------------------------- booting


def boot_ours(kernel: Path, image: Path, devices: Sequence[str], transcript: Path) -> OurNfsBoot:
    try:
        result = qemu_boot.boot(kernel, image, OURS_APPEND, devices, timeout=bench_boot.BOOT_TIMEOUT,
                                memory_mb=bench_boot.BOOT_MEMORY_MB)  # fmt: skip
    except qemu_boot.BootError as exc:
        raise ComposeError(str(exc), "install qemu-system-x86 (scripts/setup)") from exc
    save_console(transcript, result.lines)
    if result.matched_line is None:
        raise ComposeError(f"NFS boot of {image} ended by {result.reason} after {result.elapsed:.0f} s",
                           f"its console is in {transcript}")  # fmt: skip
    report = bench_boot.parse_hwreport(result.matched_line)
    return parse_our_nfs_boot(result.lines, report, result.elapsed)


def boot_debian(kernel: Path, image: Path, devices: Sequence[str], transcript: Path) -> DebianNfsBoot:
    replies = [
        qemu_boot.Reply(_SHELL, bench_anchors.uptime_probe("PREMOUNT") + "; exit\n"),
        qemu_boot.Reply(_SHELL, bottom_probe()),
    ]
    try:
        result = qemu_boot.boot(kernel, image, DEBIAN_APPEND, devices, timeout=bench_boot.BOOT_TIMEOUT,
                                until="UPTIME_BOTTOM ", replies=replies,
                                memory_mb=bench_boot.BOOT_MEMORY_MB)  # fmt: skip
    except qemu_boot.BootError as exc:
        raise ComposeError(str(exc), "install qemu-system-x86 (scripts/setup)") from exc
    save_console(transcript, result.lines)
    if result.reason != "matched":
        raise ComposeError(f"initramfs-tools NFS boot of {image} ended by {result.reason} after "
                           f"{result.elapsed:.0f} s", f"its console is in {transcript}")  # fmt: skip
    return parse_debian_nfs_boot(result.lines, result.elapsed)


def debian_nfs_image(kver: str, out_dir: Path, quick: bool) -> tuple[Path, str]:
    """initramfs-tools' image for the NFS boot and how it was made. BOOT= is only read at boot
    (boot=nfs on the command line says it too), so --quick boots Debian's own initrd instead of
    spending a mkinitramfs run on the same scripts."""
    if quick:
        image = Path(f"/boot/initrd.img-{kver}")
        if not image.is_file():
            raise ComposeError(f"{image}: not found", f"update-initramfs -c -k {kver}")
        return image, "Debian's own initrd (as update-initramfs built it)"
    anchor = bench_anchors.build_mkinitramfs(kver, out_dir, modules="most", boot="nfs")
    log(f"mkinitramfs MODULES=most BOOT=nfs: {anchor.wall_seconds:.2f} s")
    return anchor.image, "mkinitramfs MODULES=most BOOT=nfs (a copy of /etc/initramfs-tools)"


def measure_nfs(kver: str, image: Path, out_dir: Path, runs: int, *, quick: bool = False) -> NfsTimings:
    """`runs` NFS boots of our image and of initramfs-tools', alternated, one server for all."""
    kernel = Path(f"/boot/vmlinuz-{kver}")
    debian, label = debian_nfs_image(kver, out_dir, quick)
    export = out_dir / "nfs-export"
    shutil.rmtree(export, ignore_errors=True)
    export.mkdir(parents=True)
    (export / MARKER).write_text("scripts/bench NFS export\n")
    disk = bench_boot.boot_disk(out_dir)
    devices = bench_boot.boot_devices(disk)
    consoles = out_dir / "console"
    ours: list[OurNfsBoot] = []
    theirs: list[DebianNfsBoot] = []
    # nfs_server waits for the port (its lock, then no listener: a test elsewhere on the machine)
    exports = [nfs_server.Export(export, PSEUDO)]
    server = nfs_server.NfsServer(out_dir / "nfs-server", exports, protocols=(3, 4), port_wait=PORT_WAIT_S)
    try:
        with server:
            for i in range(runs):
                ours.append(boot_ours(kernel, image, devices, consoles / f"nfs-ours-{i + 1}.txt"))
                o = ours[-1]
                log(f"nfs run {i + 1}, ours: probe end {o.probe_end:.2f}, mounted (NFS {o.version}) "
                    f"{o.mounted:.2f} s uptime")  # fmt: skip
                server.check_alive()
                theirs.append(boot_debian(kernel, debian, devices, consoles / f"nfs-debian-{i + 1}.txt"))
                d = theirs[-1]
                log(f"nfs run {i + 1}, initramfs-tools: premount {d.premount:.2f}, "
                    f"mounted (NFS {d.version}) {d.mounted:.2f} s uptime")  # fmt: skip
                server.check_alive()
    except nfs_server.NfsServerError as exc:
        hint = "install nfs-ganesha nfs-ganesha-vfs rpcbind (scripts/setup)"
        raise ComposeError(f"NFS server: {exc}", hint) from exc
    return NfsTimings(
        devices=tuple(bench_boot.boot_devices(Path(display_path(disk)))),
        memory_mb=bench_boot.BOOT_MEMORY_MB,
        ours_image=display_path(image), ours_bytes=image.stat().st_size,
        debian_image=display_path(debian), debian_bytes=debian.stat().st_size, debian_label=label,
        ours_append=OURS_APPEND, debian_append=DEBIAN_APPEND,
        server=f"nfs-ganesha (scripts/nfs_server.py), NFS 3 and 4 on 127.0.0.1, export {PSEUDO} read-only",
        ours=tuple(ours), debian=tuple(theirs),
    )  # fmt: skip
