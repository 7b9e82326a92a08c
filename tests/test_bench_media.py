"""scripts/bench's NFS and PXE stages, pure parts: parsing the console lines and inotify records
of real boots, and rendering their sections (`tests/test_bench_quick.py` runs them for real)."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.errors import ComposeError
from tests.bench_loader import KVER, MACHINE, bench, bench_nfs, bench_pxe, bench_report, bench_results

# ---------------------------------------------------------------- NFS and PXE (lines from real boots)

OUR_NFS = [
    "[   11.243775] Run /init as init process",
    "stage: storage ok no RAID or LVM on the disks",
    "stage: network ok eth0 dhcp 10.0.2.15/24",
    "initrd-composer: nfs: 10.0.2.2:/bench-nfs mounted with NFS 4.2 on /run/initrd-composer/media/nfs",
    "[   33.171722] initrd-composer: nfs: 10.0.2.2:/bench-nfs mounted with NFS 4.2 on "
    "/run/initrd-composer/media/nfs",
    "stage: media ok nfs 10.0.2.2:/bench-nfs at /run/initrd-composer/media/nfs",
]
OUR_NFS_REPORT: dict[str, Any] = {
    "timings": {"init_start": 14.53, "probe_end": 23.05},
    "network": {"ok": True, "seconds": 1.55},
    "media": {"ok": True, "kind": "nfs", "seconds": 4.693, "error": None,
              "data": {"listing": ["bench-nfs-marker"], "version": "4.2"}},
}  # fmt: skip
DEBIAN_NFS = [
    "[   15.985884] Run /init as init process",
    "UPTIME_PREMOUNT 31.30 0.08",
    "IP-Config: no response after 2 secs - giving up",
    "IP-Config: ens2 complete (dhcp from 10.0.2.2):",
    '(initramfs) echo UPTIME_"BOTTOM" $(cat /proc/uptime) LS $(ls /root) MOUNT $(grep',
    "UPTIME_BOTTOM 45.75 10.91 LS bench-nfs-marker MOUNT 10.0.2.2:/bench-nfs /root nfs ro,relatime,vers=3,"
    "rsize=1048576,wsize=1048576,namlen=255,hard,nolock,proto=tcp,port=2049,timeo=600,retrans=10,sec=sys,"
    "local_lock=all,addr=10.0.2.2 0 0",
]


def test_parse_nfs_boots_from_real_transcripts() -> None:
    ours = bench_nfs.parse_our_nfs_boot(OUR_NFS, OUR_NFS_REPORT, 41.06)
    assert ours == bench_nfs.OurNfsBoot(11.243775, 23.05, 33.171722, 1.55, 4.693, "4.2", 41.06)
    assert ours.span == 10.12
    deb = bench_nfs.parse_debian_nfs_boot(DEBIAN_NFS, 52.349)
    assert (deb.init_start, deb.premount, deb.mounted, deb.version) == (15.985884, 31.30, 45.75, "3")
    assert deb.mount_line.startswith("10.0.2.2:/bench-nfs /root nfs ro,") and deb.ipconfig_timeouts == 1
    assert deb.span == 14.45 and deb.wall_seconds == 52.35
    assert bench_nfs.bottom_probe().startswith('echo UPTIME_"BOTTOM" ')  # the echo of it cannot match


@pytest.mark.parametrize(
    ("lines", "report"),
    [
        (OUR_NFS, {**OUR_NFS_REPORT, "media": {"ok": False, "error": "server not answering"}}),
        (OUR_NFS, {**OUR_NFS_REPORT, "media": {**OUR_NFS_REPORT["media"], "data": {"listing": ["x"]}}}),
        ([line for line in OUR_NFS if not line.startswith("[   33")], OUR_NFS_REPORT),  # no stamped line
        (OUR_NFS, {**OUR_NFS_REPORT, "network": None}),
    ],
)
def test_parse_our_nfs_boot_fails_loudly(lines: list[str], report: dict[str, Any]) -> None:
    with pytest.raises(ComposeError):
        bench_nfs.parse_our_nfs_boot(lines, report, 1.0)


@pytest.mark.parametrize("drop", ["UPTIME_PREMOUNT", "UPTIME_BOTTOM", "[   15"])
def test_parse_debian_nfs_boot_needs_every_mark(drop: str) -> None:
    with pytest.raises(ComposeError):
        bench_nfs.parse_debian_nfs_boot([line for line in DEBIAN_NFS if not line.startswith(drop)], 1.0)
    unmounted = [*DEBIAN_NFS[:-1], "UPTIME_BOTTOM 45.75 10.91 LS MOUNT"]  # /root empty, no mount line
    with pytest.raises(ComposeError, match="did not mount"):
        bench_nfs.parse_debian_nfs_boot(unmounted, 1.0)


def _inotify(*records: tuple[int, str]) -> bytes:
    """inotify(7) records as the kernel lays them out (name NUL-padded to 16 bytes)."""
    out = b""
    for mask, name in records:
        raw = name.encode().ljust(16, b"\0")
        out += struct.pack("iIII", 1, mask, 0, len(raw)) + raw
    return out


# one TFTP boot as inotify reported it (seconds after qemu's start), and its console lines
TFTP_EVENTS = [
    *bench_pxe.decode_inotify(_inotify((0x20, "boot.ipxe")), 5.511),
    *bench_pxe.decode_inotify(_inotify((0x10, "boot.ipxe")), 5.516),
    *bench_pxe.decode_inotify(_inotify((0x20, "vmlinuz")), 6.596),
    *bench_pxe.decode_inotify(_inotify((0x10, "vmlinuz"), (0x20, "initrd.img")), 7.078),
    *bench_pxe.decode_inotify(_inotify((0x10, "initrd.img")), 10.380),
]
PXE_LINES = [
    (24.880, "[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian "
     "12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian"),
    (24.881, "[    0.000000] Command line: initrd=initrd.img console=tty0 console=ttyS0,115200n8 probe pxe "
     "BOOTIF=01-52-54-00-12-34-56"),
    (24.883, "[    0.000000] RAMDISK: [mem 0x3d3a9000-0x3ff3cfff]"),
]  # fmt: skip
INITRD_BYTES = 45694427


def test_decode_inotify_and_parse_a_tftp_run() -> None:
    assert TFTP_EVENTS[3:5] == [bench_pxe.FileEvent(7.078, "vmlinuz", "close"),
                                bench_pxe.FileEvent(7.078, "initrd.img", "open")]  # fmt: skip
    run = bench_pxe.parse_pxe_run("tftp", events=TFTP_EVENTS, lines=PXE_LINES, initrd_bytes=INITRD_BYTES)
    assert run == bench_pxe.PxeRun("tftp", 5.516, 6.596, 7.078, 7.078, 10.380, 24.880, 45694976, None)
    assert (run.initrd_seconds, run.kernel_seconds, run.script_to_console) == (3.302, 0.482, 19.364)
    with pytest.raises(ComposeError, match="not the 45698523 bytes"):  # the kernel got a page less
        bench_pxe.parse_pxe_run("tftp", events=TFTP_EVENTS, lines=PXE_LINES, initrd_bytes=INITRD_BYTES + 4096)
    with pytest.raises(ComposeError, match=r"initrd\.img was not sent"):
        bench_pxe.parse_pxe_run("tftp", events=TFTP_EVENTS[:-1], lines=PXE_LINES, initrd_bytes=INITRD_BYTES)
    with pytest.raises(ComposeError, match="no console line"):
        bench_pxe.parse_pxe_run("tftp", events=TFTP_EVENTS, lines=PXE_LINES[2:], initrd_bytes=INITRD_BYTES)


def test_http_run_needs_the_servers_whole_get() -> None:
    whole = bench_pxe.Request("/initrd.img", 7.1, 9.45, 200, INITRD_BYTES)
    run = bench_pxe.parse_pxe_run("http", events=TFTP_EVENTS, lines=PXE_LINES, requests=[whole],
                                  initrd_bytes=INITRD_BYTES)  # fmt: skip
    assert run.request_seconds == 2.35
    for requests in ([], [replace(whole, sent_bytes=1000)], [replace(whole, status=404)]):
        with pytest.raises(ComposeError, match="did not send all"):
            bench_pxe.parse_pxe_run("http", events=TFTP_EVENTS, lines=PXE_LINES, requests=requests,
                                    initrd_bytes=INITRD_BYTES)  # fmt: skip


def test_file_watch_and_http_tree_see_a_real_get(tmp_path: Path) -> None:
    (tmp_path / "initrd.img").write_bytes(b"x" * 5000)
    with bench_pxe.FileWatch(tmp_path) as watch, bench_pxe.http_tree(tmp_path) as server:
        url = f"http://127.0.0.1:{server.server_port}"
        assert urllib.request.urlopen(f"{url}/initrd.img").read() == b"x" * 5000
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}/missing")
    assert [(r.path, r.status, r.sent_bytes) for r in server.requests] == [("/initrd.img", 200, 5000),
                                                                          ("/missing", 404, 0)]  # fmt: skip
    start, end = bench_pxe.file_span(watch.events, "initrd.img")
    assert start <= end and [e.kind for e in watch.events if e.name == "initrd.img"] == ["open", "close"]


NFS = bench_nfs.NfsTimings(
    devices=("-device", "e1000"), memory_mb=1024, ours_image="out/bench/ours-zstd.img",
    ours_bytes=40 * 2**20, debian_image="out/bench/mkinitramfs-nfs-k.img", debian_bytes=32 * 2**20,
    debian_label="mkinitramfs BOOT=nfs",
    ours_append=bench_nfs.OURS_APPEND, debian_append=bench_nfs.DEBIAN_APPEND, server="ganesha",
    ours=(bench_nfs.parse_our_nfs_boot(OUR_NFS, OUR_NFS_REPORT, 41.0),),
    debian=(bench_nfs.parse_debian_nfs_boot(DEBIAN_NFS, 52.3),),
)  # fmt: skip
HTTP_RUN = bench_pxe.PxeRun("http", 6.219, 7.412, 7.756, 8.019, 10.364, 22.227, 45694976, 2.35)
PXE = bench_pxe.PxeTimings(
    tree="out/bench/pxe-tree", initrd_bytes=INITRD_BYTES, kernel_bytes=8247232,
    netdevs={p: bench_pxe.netdev(p, Path("out/bench/pxe-tree"), "PORT") for p in bench_pxe.PROTOCOLS},
    device=bench_pxe.DEVICE,
    runs=(bench_pxe.parse_pxe_run("tftp", events=TFTP_EVENTS, lines=PXE_LINES, initrd_bytes=INITRD_BYTES),
          HTTP_RUN),
)  # fmt: skip


def test_nfs_and_pxe_sections_render_ratios_and_what_was_measured() -> None:
    report = bench_results.build_report(KVER, "scripts/bench --only nfs,pxe", MACHINE, [],
                                        nfs=NFS, pxe=PXE)  # fmt: skip
    text = bench_report.render_markdown(report)
    assert text.index("## NFS media over DHCP") < text.index("## PXE transfer") < text.index("## Commands")
    assert "| coldplug done to NFS mounted (s) | 10.12 | 14.45 |" in text
    assert "| NFS version mounted | 4.2 | 3 |" in text
    assert f"- Coldplug done to NFS mounted, ours / initramfs-tools: {10.12 / 14.45:.3f}" in text
    assert "| 1 | 11.24 | 23.05 | 33.17 | 10.12 | 1.55 | 4.69 | 15.99 | 31.30 | 45.75 | 14.45 | 1 |" in text
    assert "| initrd.img transfer s (opened to closed by its server) | 3.30 | 2.35 |" in text
    rates = f"{INITRD_BYTES / 2**20 / 3.302:.1f} | {INITRD_BYTES / 2**20 / 2.345:.1f}"
    assert f"| initrd.img MiB/s | {rates} |" in text
    assert f"- initrd.img transfer, HTTP / TFTP: {2.345 / 3.302:.3f}" in text
    assert "| 1 | http | 6.22 | 0.34 | 2.35 | 2.35 | 22.23 | 16.01 |" in text
    assert "`-netdev user,id=n0,bootfile=http://10.0.2.2:PORT/boot.ipxe`" in text
    doc = json.loads(json.dumps(bench_report.report_json(report)))
    assert doc["nfs"]["debian"][0]["version"] == "3" and doc["nfs"]["span_ratio"] == round(10.12 / 14.45, 4)
    assert doc["pxe"]["runs"][0]["initrd_seconds"] == 3.302
    assert doc["pxe"]["transfer_ratio"] == round(2.345 / 3.302, 4)
    without = bench_results.build_report(KVER, "scripts/bench", MACHINE, [])
    assert bench_report.report_json(without)["nfs"] is None


def test_cli_stages_quick_and_image() -> None:
    assert bench.parse_args([]).stages == bench.STAGES
    assert bench.parse_args(["--skip-boot"]).stages == ("builds",)
    only = bench.parse_args(["--only", "pxe,nfs"])
    assert only.stages == ("nfs", "pxe") and bench.output_name(only) == "only-nfs-pxe"
    quick = bench.parse_args(["--quick", "--image", "x.img"])
    expected = (("nfs", "pxe", "restore-set"), 1, "quick")
    assert (quick.stages, quick.boot_runs, bench.output_name(quick)) == expected
    assert bench.parse_args(["--quick", "--only", "boot,pxe"]).stages == ("pxe",)
    assert bench.output_name(bench.parse_args([])) is None  # BENCHMARKS.md
    assert bench.output_name(bench.parse_args(["--boot-only"])) == "boot-only"
    for words in (["--only", "nfs,tape"], ["--quick", "--only", "builds"], ["--image", "x.img"],
                  ["--only", "nfs", "--boot-only"]):  # fmt: skip
        with pytest.raises(SystemExit) as bad:
            bench.parse_args(words)
        assert bad.value.code == 2
