"""Fixtures of the capture and restore tests: the source machine, its capture by the rescue
image's `capture` mode onto a disk labelled CAPTURE, and an NFS server exporting that set
(and damaged copies of it) to the restore guests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.runner import run
from tests.image_fixtures import BuiltImage, compose
from tests.source_machine import (
    AWKWARD_NAMES,
    MARKER,
    SourceMachine,
    boot_to_marker,
    marker_words,
    source_machine,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import nfs_server
import qemu_boot

CAPTURE_DISK_BYTES = 4 << 30
CAPTURE_TIMEOUT_S = 900.0
RESTORE_TIMEOUT_S = 1500.0
GIB = 1 << 30
# The report printed after the restore stage (the one after the media stage has no such key).
UNTIL_REPORT = '"restore":{'
# A restore test: one worker for all of them (they share the source machine and its capture),
# a restore and a marker boot in TCG each.
RESTORE_MARKS = [
    pytest.mark.qemu,
    pytest.mark.xdist_group("source-machine"),
    pytest.mark.timeout(RESTORE_TIMEOUT_S + 600),
]
# Target disk controllers the source never had (the disk's drive id is d0).
SCSI = ("-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,drive=d0,bus=scsi0.0")
AHCI_PORT1 = ("-device", "ide-hd,drive=d0,bus=ide.1")  # q35's built-in AHCI, the CD on port 0
# The NFS tests hold port 2049 a module at a time, on the other worker: wait for them.
PORT_WAIT_S = 1200.0


@pytest.fixture(scope="session")
def source(all_nics_image: BuiltImage) -> SourceMachine:
    return source_machine(Path(f"/boot/vmlinuz-{all_nics_image.version}"), all_nics_image.path)


@dataclass(frozen=True)
class CapturedSet:
    set_dir: Path  # on the host: the CAPTURE disk mounted read-only
    lines: tuple[str, ...]  # the capture boot's console
    report: dict[str, Any]  # its hwreport with the `capture` section


def capture_boot(
    image: BuiltImage, source: SourceMachine, out_disk: Path, append: str = ""
) -> qemu_boot.BootResult:
    """Boot the rescue image in `capture` mode with the source disk (a snapshot: read only
    anyway) and the output disk; until it powers off."""
    devices = [
        "-drive",
        f"file={source.disk},format=raw,if=virtio,snapshot=on",
        "-drive",
        f"file={out_disk},format=raw,if=virtio",
    ]
    return qemu_boot.boot(
        Path(f"/boot/vmlinuz-{image.version}"),
        image.path,
        f"console=ttyS0 capture capture_to=LABEL=CAPTURE restore_then=poweroff {append}".strip(),
        devices,
        timeout=CAPTURE_TIMEOUT_S,
        until="power off now",
        memory_mb=1536,
    )


def last_report(lines: tuple[str, ...] | list[str]) -> dict[str, Any]:
    import json  # noqa: PLC0415

    found = [line for line in lines if line.startswith("hwreport: ")]
    assert found, "no hwreport line:\n" + "\n".join(lines[-40:])
    return dict(json.loads(found[-1].split(": ", 1)[1]))


@pytest.fixture(scope="session")
def captured(
    all_nics_image: BuiltImage, source: SourceMachine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CapturedSet]:
    base = tmp_path_factory.mktemp("captured")
    out = base / "capture.img"
    with open(out, "wb") as f:
        f.truncate(CAPTURE_DISK_BYTES)
    run(["mkfs.ext4", "-q", "-F", "-L", "CAPTURE", out])
    result = capture_boot(all_nics_image, source, out)
    lines = tuple(result.lines)
    assert result.reason == "matched" and any("stage: capture ok" in line for line in lines), "\n".join(
        lines[-80:]
    )
    mnt = base / "mnt"
    mnt.mkdir()
    run(["mount", "-o", "ro,loop", out, mnt])
    try:
        yield CapturedSet(mnt / "restore-set", lines, last_report(lines))
    finally:
        run(["umount", mnt], check=False)


@dataclass(frozen=True)
class SetExports:
    """The good set and damaged copies, each an NFSv4 export of the server on 10.0.2.2."""

    good: str  # the pseudo path of the set as captured
    no_manifest: str  # the same set without manifest.json
    corrupted: str  # one archive with one byte flipped
    corrupted_archive: str  # its file name
    wrong_version: str  # the manifest of a newer release (version 99)
    unsupported: str  # the layout of a machine with a LUKS volume, as capture records one


def _copy_linked(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """A copy of a set directory made of hard links (the set's disk is read-only; links need
    a writable filesystem, so files are copied, small ones and the archive to damage)."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name not in skip:
            shutil.copy2(entry, dst / entry.name)


@pytest.fixture(scope="session")
def export_dirs(
    captured: CapturedSet, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[nfs_server.Export]]:
    """The damaged copies of the set, made once; (base, exports)."""
    base = tmp_path_factory.mktemp("exports")
    bad = base / "no-manifest"
    _copy_linked(captured.set_dir, bad, skip=("manifest.json",))
    damaged = base / "corrupted"
    _copy_linked(captured.set_dir, damaged)
    victim = damaged / "srv.pax.zst"  # the xfs filesystem: the awkward files
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    newer = base / "wrong-version"
    _copy_linked(captured.set_dir, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    luks = base / "unsupported"
    _copy_linked(captured.set_dir, luks)
    layout = json.loads((luks / "layout.json").read_text())
    layout["refused"].append({"kind": "signature", "name": "/dev/vdb", "reason": "LUKS encrypted"})
    _rewrite_extra(luks, "layout.json", json.dumps(layout, indent=1).encode())
    exports: list[nfs_server.Export] = [
        nfs_server.Export(captured.set_dir, GOOD_EXPORT),
        nfs_server.Export(bad, "/no-manifest"),
        nfs_server.Export(damaged, "/corrupted"),
        nfs_server.Export(newer, "/wrong-version"),
        nfs_server.Export(luks, "/unsupported"),
    ]
    return base, exports


def _rewrite_extra(set_dir: Path, name: str, data: bytes) -> None:
    """A file of the set replaced, with its sha256 and size in the manifest (as a capture that
    wrote it so would have recorded them)."""
    (set_dir / name).write_bytes(data)
    manifest = json.loads((set_dir / "manifest.json").read_text())
    for extra in manifest["extras"]:
        if extra["file"] == name:
            extra.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (set_dir / "manifest.json").write_text(json.dumps(manifest))


GOOD_EXPORT = "/set"


# Function scope: the server owns port 2049 only while one test runs. The NFS tests of other
# modules (same xdist group, so the same worker, possibly interleaved with these) start their
# own servers on it; one held across tests made them, or these, wait and fail.
@pytest.fixture
def set_exports(export_dirs: tuple[Path, list[nfs_server.Export]], tmp_path: Path) -> Iterator[SetExports]:
    _base, exports = export_dirs
    with nfs_server.NfsServer(tmp_path / "nfs", exports, port_wait=PORT_WAIT_S) as server:
        yield SetExports(
            GOOD_EXPORT, "/no-manifest", "/corrupted", "srv.pax.zst", "/wrong-version", "/unsupported"
        )
        server.check_alive()


def blank_disk(path: Path, size: int, pattern: bytes = b"") -> Path:
    """A sparse disk image; `pattern` written at its start and middle, so that "unchanged"
    means something for a disk the restore must not touch."""
    with open(path, "wb") as f:
        f.truncate(size)
        if pattern:
            for offset in (0, size // 2):
                f.seek(offset)
                f.write(pattern)
    os.sync()
    return path


@pytest.fixture(scope="session")
def pxe_tree(
    tmp_path_factory: pytest.TempPathFactory, build_cache: Path, all_nics_image: BuiltImage
) -> Path:
    """A PXE tree whose default entry is `nuke` from the good set's NFS export."""
    out = tmp_path_factory.mktemp("pxe-nuke") / "tftp"
    argv = ["pxe", "-o", str(out), "--initrd", str(all_nics_image.path), "--default-mode", "nuke",
            "--timeout", "1", "--nfs", f"10.0.2.2:{GOOD_EXPORT}", "--ipconf", "eth0:dhcp",
            "--append", "restore_then=poweroff media_timeout=60"]  # fmt: skip
    assert compose(argv, build_cache) == 0
    return out


@dataclass(frozen=True)
class RestoredDisk:
    disk: Path  # left as the restore wrote it: later boots use snapshots, mounts are read-only
    lines: tuple[str, ...]
    restore: dict[str, Any]  # the report's `restore` section
    elapsed: float


NVME_DEVICE = ("-device", "nvme,drive=d0,serial=NEWDISK1")


@pytest.fixture(scope="session")
def nvme_restored(
    pxe_tree: Path,
    export_dirs: tuple[Path, list[nfs_server.Export]],
    tmp_path_factory: pytest.TempPathFactory,
) -> RestoredDisk:
    """`nuke` over PXE (iPXE ROM of an e1000e) + NFS onto a 10 GiB NVMe disk, larger than the
    source's: made once, for the nuke test's checks and the compare test's copy."""
    base = tmp_path_factory.mktemp("nvme-restored")
    disk = blank_disk(base / "nvme.img", 10 * GIB)
    devices = ["-drive", f"file={disk},format=raw,if=none,id=d0", *NVME_DEVICE,
               "-netdev", f"user,id=n0,tftp={pxe_tree},bootfile=boot.ipxe",
               "-device", "e1000e,netdev=n0,bootindex=1"]  # fmt: skip
    with nfs_server.NfsServer(base / "nfs", export_dirs[1], port_wait=PORT_WAIT_S):
        result = qemu_boot.boot_firmware(
            devices, timeout=RESTORE_TIMEOUT_S, until=UNTIL_REPORT, memory_mb=1536
        )
    lines = tuple(result.lines)
    ok = result.reason == "matched" and any("stage: restore ok" in line for line in lines)
    assert ok, "\n".join(lines[-80:])
    return RestoredDisk(disk, lines, dict(last_report(lines)["restore"]), result.elapsed)


def boots_to_marker_on(disk: Path, controller: tuple[str, ...], swap: str) -> None:
    """The restored disk boots from SeaBIOS on `controller` to the source's marker: its files,
    its capability, and its swap on the new device name."""
    result = boot_to_marker(disk, controller=controller)
    assert result.reason == "matched", "\n".join(result.lines[-60:])
    assert marker_words(result) == [
        MARKER,
        f"files={len(AWKWARD_NAMES)}",
        "colour=blue",
        "/srv/awkward/capped",
        "cap_net_raw=ep",
        f"swap={swap}",
    ]


def restore_over_http(
    image: BuiltImage, scenario: Any, devices: list[str], words: str
) -> tuple[str, list[str]]:
    """A direct boot restoring (`words`: "nuke noresize") from the set `scenario` serves at
    /set/ on the host's loopback (tests.http_test_server), until the report after the restore
    stage, which must say ok; (the set's URL as the guest sees it, the console lines)."""
    from tests.http_test_server import serving  # noqa: PLC0415

    net = ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
    with serving(scenario) as base:
        url = base.replace("127.0.0.1", "10.0.2.2") + "/set/"
        append = f"console=ttyS0 {words} url={url} ip=dhcp restore_then=poweroff media_timeout=60"
        result = qemu_boot.boot(Path(f"/boot/vmlinuz-{image.version}"), image.path, append,
                                [*devices, *([] if "-netdev" in devices else net)], timeout=RESTORE_TIMEOUT_S,
                                until=UNTIL_REPORT, memory_mb=1536)  # fmt: skip
    lines = list(result.lines)
    assert result.reason == "matched" and any("stage: restore ok" in line for line in lines), "\n".join(
        lines[-80:]
    )
    return url, lines
