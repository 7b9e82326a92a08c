"""Capture a real Debian machine and restore it with `nuke` onto other hardware, for real.

The source (tests/source_machine.py) runs on virtio-blk with an initramfs that holds only
virtio_blk (MODULES=dep) and names its swap /dev/vda3 in fstab. The rescue image captures it
offline (`capture capture_to=LABEL=CAPTURE`: LVM is assembled by the rescue system, the host
kernel could not), an NFS server exports the set, and `nuke` restores it:

- over PXE (iPXE ROM of an e1000e) + NFS onto an NVMe disk larger than the source's;
- onto a smaller virtio-scsi disk that still holds every filesystem's data;
- onto a disk too small: refused, the disk's bytes unchanged;
- from a set whose archive has a flipped byte: the restore fails, naming what is damaged;
- from a set without its manifest, of a newer release's format, or of a machine with what
  the restore cannot make (a LUKS volume), and onto a machine with no writable disk:
  refused before any write, the disk's bytes unchanged.

Each restored disk boots from SeaBIOS through its own GRUB and rebuilt initramfs to the
source's marker (with its swap on the new device name), and the host compares every file of
source and target with rsync (tests/disk_trees.py), not with the project's manifest code.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.disk_trees import mounted_trees, rsync_differences, sparse_sha256
from tests.image_fixtures import BuiltImage
from tests.restore_fixtures import (
    GIB,
    NVME_DEVICE,
    RESTORE_TIMEOUT_S,
    UNTIL_REPORT,
    CapturedSet,
    RestoredDisk,
    SetExports,
    blank_disk,
    boots_to_marker_on,
    last_report,
)
from tests.source_machine import SourceMachine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures", "tests.restore_fixtures")
# Not with the NFS tests: their module-scoped server would block these in the same worker;
# across workers the port lock makes the two take turns (see restore_fixtures.PORT_WAIT_S).
# A test here boots twice in TCG (the restore, then the restored disk) and compares both
# disks; on CI's two busy cores that is 10-20 minutes, more than the suite's default limit.
pytestmark = [
    pytest.mark.qemu,
    pytest.mark.xdist_group("source-machine"),
    pytest.mark.timeout(RESTORE_TIMEOUT_S + 900),
]
# What the restore's fix-ups may change, by design: fstab's device names, the initramfs
# rebuilt for the new controller, GRUB's files reinstalled (modules copied anew, core.img).
FIXUP_PATTERNS = (
    "/etc/fstab",
    "/boot/initrd.img-*",
    "/boot/grub/*",
    "/var/lib/initramfs-tools/*",
)
# filesystem on the source disk -> its mount point, as tests/disk_trees.py names them
TREES = {"part2": "/boot", "vg0/root": "/", "vg0/srv": "/srv"}


def _nuke_append(export: str) -> str:
    return f"console=ttyS0 nuke nfsmount=10.0.2.2:{export} ip=dhcp restore_then=poweroff media_timeout=60"


def _restore_direct(
    image: BuiltImage,
    export: str,
    drive: list[str],
    *,
    until: str = "",
    replies: tuple[qemu_boot.Reply, ...] = (),
) -> tuple[list[str], dict[str, Any]]:
    """A direct kernel boot of the rescue image in nuke mode (virtio-net, user networking),
    until the report after the restore stage (or `until`)."""
    net = ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
    result = qemu_boot.boot(
        Path(f"/boot/vmlinuz-{image.version}"),
        image.path,
        _nuke_append(export),
        [*drive, *net],
        timeout=RESTORE_TIMEOUT_S,
        until=until or UNTIL_REPORT,
        replies=replies,
        memory_mb=1536,
    )
    lines = list(result.lines)
    assert result.reason == "matched", "\n".join(lines[-80:])
    return lines, dict(last_report(lines)["restore"])


def _compare(source: Path, target: Path, changed: list[str]) -> None:
    """Every file of every filesystem identical, both ways, but for what the fix-ups changed:
    those files are left out; a changed directory may differ in its times only (a file was
    written in it), nothing else."""
    with mounted_trees(source) as src, mounted_trees(target) as dst:
        assert set(src) == set(dst) == set(TREES), (sorted(src), sorted(dst))
        for name, mount in TREES.items():
            inside = [
                os.path.relpath(c, mount)
                for c in changed
                if c == mount or c.startswith(mount.rstrip("/") + "/")
            ]
            if mount == "/":
                inside = [c for c in inside if not c.startswith(("boot", "srv"))]
            dirs = {c for c in inside if (dst[name] / c).is_dir()}
            files = ["/" + c for c in inside if c not in dirs]
            for path in files:  # a directory may change its times only, anywhere (checked below)
                full = os.path.normpath(os.path.join(mount, path.lstrip("/")))
                assert any(fnmatch.fnmatch(full, p) for p in FIXUP_PATTERNS), f"the fix-ups changed {full}"
            for a, b in ((src[name], dst[name]), (dst[name], src[name])):
                lines = rsync_differences(a, b, files)
                real = [line for line in lines if not _time_only(line, dirs)]
                assert real == [], f"{mount}: {real[:20]}"


def _time_only(line: str, dirs: set[str]) -> bool:
    """An rsync itemized line for a directory of `dirs` whose only change is its times."""
    flags, _, path = line.partition(" ")
    path = path.rstrip("/") or "."
    return flags.startswith(".d") and set(flags[2:]) <= {".", "t"} and path in dirs


def test_capture_wrote_a_complete_set(captured: CapturedSet) -> None:
    capture = captured.report["capture"]
    assert isinstance(capture, dict) and capture["ok"], capture
    names = sorted(p.name for p in captured.set_dir.iterdir())
    assert {"manifest.json", "layout.json", "root.pax.zst", "boot.pax.zst", "srv.pax.zst"} <= set(names), (
        names
    )


def test_nuke_over_pxe_onto_a_larger_nvme_disk(nvme_restored: RestoredDisk, source: SourceMachine) -> None:
    restore = nvme_restored.restore
    assert [(m["source"], m["target"]) for m in restore["plan"]["mapping"]] == [("vda", "nvme0n1")]
    assert restore["failures"] == [] and restore["verified_files"] == restore["files"] > 1000
    assert restore["fixups"]["rewritten"]["etc/fstab"] == ["line 4: /dev/vda3 -> /dev/nvme0n1p3"]
    fixups = [c["seconds"] for c in restore["fixups"]["commands"]]
    print(
        f"nuke over PXE onto nvme: restore {restore['seconds']} s",
        f"(extract+verify {restore['extract_seconds']} s,",
        f"fix-ups {fixups} s), boot to report {nvme_restored.elapsed:.0f} s",
    )
    boots_to_marker_on(nvme_restored.disk, NVME_DEVICE, "/dev/nvme0n1p3")
    _compare(source.disk, nvme_restored.disk, restore["fixups"]["changed"])


def test_nuke_onto_a_smaller_virtio_scsi_disk(
    all_nics_image: BuiltImage, set_exports: SetExports, source: SourceMachine, tmp_path: Path
) -> None:
    disk = blank_disk(tmp_path / "small.img", 4 * GIB)
    controller = ("-device", "virtio-scsi-pci,id=s0", "-device", "scsi-hd,drive=d0,bus=s0.0")
    _lines, restore = _restore_direct(
        all_nics_image, set_exports.good, ["-drive", f"file={disk},format=raw,if=none,id=d0", *controller]
    )
    assert restore.get("ok"), restore
    sizes = {p["number"]: p for p in restore["plan"]["plan"]["disks"][0]["partitions"]}
    assert sizes[4]["new_bytes"] < sizes[4]["old_bytes"]  # the LVM PV shrank with the disk
    boots_to_marker_on(disk, controller, "/dev/sda3")
    _compare(source.disk, disk, restore["fixups"]["changed"])


def test_a_disk_too_small_is_refused_and_left_unchanged(
    all_nics_image: BuiltImage, set_exports: SetExports, tmp_path: Path
) -> None:
    disk = blank_disk(tmp_path / "tiny.img", 3 * GIB // 2, pattern=b"untouched" * 1000)
    before = sparse_sha256(disk)
    lines, restore = _restore_direct(
        all_nics_image, set_exports.good, ["-drive", f"file={disk},format=raw,if=virtio"]
    )
    assert any("restore refused, nothing written" in line for line in lines), "\n".join(lines[-40:])
    assert restore.get("ok") is False and "refused" in restore, restore
    assert sparse_sha256(disk) == before


# (the set's export, the disk's drive options, what the refusal says)
REFUSALS = {
    "no-manifest": ("no_manifest", "", "is incomplete: no manifest.json"),
    "wrong-version": ("wrong_version", "", "restore-set manifest version 99 is not supported"),
    "luks": ("unsupported", "", "the saved machine holds what the restore cannot recreate: /dev/vdb: LUKS"),
    "no-writable-disk": ("good", ",readonly=on", "too few target disks (0 usable for 1 source disks)"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_what_cannot_be_restored_is_refused_before_any_write(
    all_nics_image: BuiltImage, set_exports: SetExports, tmp_path: Path, case: str
) -> None:
    """The last case: the machine's only disk is read-only, so there is no disk to write."""
    which, drive, says = REFUSALS[case]
    disk = blank_disk(tmp_path / "disk.img", 8 * GIB, pattern=b"untouched" * 1000)
    before = sparse_sha256(disk)
    lines, restore = _restore_direct(
        all_nics_image, getattr(set_exports, which), ["-drive", f"file={disk},format=raw,if=virtio{drive}"]
    )
    assert restore.get("ok") is False and says in str(restore.get("refused")), restore
    said = [line for line in lines if "restore refused, nothing written: " in line and says in line]
    assert said, "\n".join(lines[-40:])
    assert not any("restore plan:" in line for line in lines)  # refused before the plan was made
    assert sparse_sha256(disk) == before


def test_a_bios_machine_is_refused_on_uefi_firmware_before_any_write(
    all_nics_image: BuiltImage, set_exports: SetExports, tmp_path: Path
) -> None:
    """The rescue image started by OVMF (UEFI, no CSM): the saved machine's BIOS GRUB would
    never start on this machine, so nothing is written and the reason says why."""
    disk = blank_disk(tmp_path / "disk.img", 8 * GIB, pattern=b"untouched" * 1000)
    before = sparse_sha256(disk)
    firmware = qemu_boot.ovmf_args(tmp_path / "vars.fd")
    lines, restore = _restore_direct(
        all_nics_image, set_exports.good, [*firmware, "-drive", f"file={disk},format=raw,if=virtio"]
    )
    refused = str(restore.get("refused"))
    assert restore.get("ok") is False and "started the rescue system with UEFI" in refused, restore
    assert "booted BIOS GRUB" in refused and "no EFI system partition" in refused, refused
    assert any("legacy BIOS (CSM)" in line for line in lines), "\n".join(lines[-40:])
    assert not any("restore plan:" in line for line in lines)
    assert sparse_sha256(disk) == before


def test_a_corrupted_archive_fails_the_restore_naming_it(
    all_nics_image: BuiltImage, set_exports: SetExports, tmp_path: Path
) -> None:
    """The failure names the damage and what was written; `nuke` typed in the shell that
    follows starts over from step 1 on the disks the first run wrote (their volume group
    active), and fails the same way."""
    disk = blank_disk(tmp_path / "disk.img", 8 * GIB)
    again = qemu_boot.Reply("the restore did not finish", "nuke; echo AGAIN-$((40+2))\n")
    lines, restore = _restore_direct(
        all_nics_image, set_exports.corrupted, ["-drive", f"file={disk},format=raw,if=virtio"],
        until="AGAIN-42", replies=(again,),
    )  # fmt: skip
    assert restore.get("ok") is False, restore
    failures = restore.get("failures") or [restore.get("error")]
    assert any(set_exports.corrupted_archive in str(f) or "srv" in str(f) for f in failures), failures
    assert "written so far" in " ".join(lines)  # it says what it had written
    stages = [line for line in lines if line.startswith("stage: restore ")]
    assert len(stages) == 2 and all(
        line.startswith("stage: restore failed verification failed: srv") for line in stages
    ), stages
    # each run's own line (the first run's also comes back from /dev/kmsg, behind a timestamp)
    plans = [line for line in lines if line.startswith("initrd-composer: restore plan: vda")]
    assert len(plans) == 2, plans  # the second run planned and wrote everything again
