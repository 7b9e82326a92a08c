"""`compare`'s pure parts: the verifier's mismatches sorted into changed/missing/extra under the
machine's mount points, the saved layout against this machine's, where each archive's
filesystem is mounted here, and the report's lines (tests/test_compare_mode.py boots it)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from initrd_composer.boot.compare.differences import (
    FileDifferences,
    layout_differences,
    machine_path,
    pair_disks,
    report_lines,
)
from initrd_composer.boot.compare.stage import archive_places, section_of
from initrd_composer.boot.restore.model import GIB
from initrd_composer.boot.restore_set.manifest import ArchiveRecord, Manifest
from initrd_composer.boot.restore_set.verify import Mismatch
from tests.test_restore_from_layout import source_layout


def _now_on_nvme(size: int = 10 * GIB) -> dict[str, Any]:
    """The source layout as a restore onto a larger NVMe disk leaves it: names and sizes change."""
    now = copy.deepcopy(source_layout())
    disk = now["disks"][0]
    disk.update(name="nvme0n1", path="/dev/nvme0n1", size_bytes=size, serial="NEWDISK1")
    last = disk["partition_table"]["partitions"][-1]
    last["size"] += (size - 6 * GIB) // 512
    for fs in now["filesystems"]:
        fs["device"] = fs["device"].replace("/dev/vda", "/dev/nvme0n1p")
    return now


def test_mismatches_sort_into_changed_missing_and_extra_under_the_mount_point() -> None:
    files = FileDifferences()
    files.add("/boot", [Mismatch("grub/grub.cfg", "sha256 differs"), Mismatch("System.map", "missing"),
                        Mismatch("new", "not in the manifest"), Mismatch(".", "mtime differs")])  # fmt: skip
    files.add("/", [Mismatch("etc/hostname", "missing")])
    files.sort()
    assert files.changed == [("/boot", "mtime differs"), ("/boot/grub/grub.cfg", "sha256 differs")]
    assert files.missing == ["/boot/System.map", "/etc/hostname"]
    assert files.extra == ["/boot/new"]
    assert files.count() == 5
    assert machine_path("/", ".") == "/" and machine_path("srv", "a/b") == "/srv/a/b"


def test_the_same_layout_has_no_differences() -> None:
    assert layout_differences(source_layout(), copy.deepcopy(source_layout())) == []


def test_a_restore_onto_a_larger_disk_shows_its_new_name_and_sizes() -> None:
    lines = layout_differences(source_layout(), _now_on_nvme())
    assert lines[0] == "disk vda -> nvme0n1: size 6.0 GiB -> 10.0 GiB"
    assert any(line.startswith("disk vda -> nvme0n1: partition 4 size ") for line in lines), lines
    assert not [line for line in lines if "missing" in line], lines


def test_a_missing_filesystem_partition_and_volume_are_named() -> None:
    now = _now_on_nvme()
    now["filesystems"] = [fs for fs in now["filesystems"] if fs["type"] != "xfs"]
    now["disks"][0]["partition_table"]["partitions"].pop(2)
    now["lvm"]["volume_groups"][0]["lvs"].pop()
    lines = layout_differences(source_layout(), now)
    assert "disk vda -> nvme0n1: partition 3 is missing" in lines
    assert "logical volume vg0/srv is missing" in lines
    assert "filesystem /srv (xfs, UUID u-/dev/vg0/srv) is missing" in lines


def test_disks_pair_by_identity_first_then_in_order() -> None:
    a, b, c = ({"name": "a", "serial": "S1"}, {"name": "b", "serial": "S2"}, {"name": "c", "serial": "S3"})
    here = [{"name": "x", "serial": "S9"}, {"name": "y", "serial": "S2"}]
    assert [(s["name"], n and n["name"]) for s, n in pair_disks([a, b, c], here)] == [
        ("a", "x"), ("b", "y"), ("c", None)]  # fmt: skip


@dataclass(frozen=True)
class _Mount:
    device: str
    mountpoint: str
    path: Path


def _manifest(*names: str) -> Manifest:
    return Manifest(tuple(ArchiveRecord(n, f"{n}.pax.zst", "0" * 64, 1, ()) for n in names))


def test_each_archive_is_found_by_its_filesystems_uuid_else_its_mount_point() -> None:
    saved = source_layout()
    for fs, name in zip(saved["filesystems"], ("boot", None, "root", "srv"), strict=True):
        fs["archive"] = name
    now = _now_on_nvme()
    now["filesystems"][3]["uuid"] = "another"  # /srv was made anew: found by its mount point
    mounts = [_Mount("/dev/nvme0n1p2", "/boot", Path("/m/boot")), _Mount("/dev/vg0/root", "/", Path("/m")),
              _Mount("/dev/vg0/srv", "/srv", Path("/m/srv"))]  # fmt: skip
    places, unmatched = archive_places(saved, now, mounts, _manifest("boot", "root", "srv"))
    assert [(a.name, mount, str(path)) for a, mount, path in places] == [
        ("boot", "/boot", "/m/boot"), ("root", "/", "/m"), ("srv", "/srv", "/m/srv")]  # fmt: skip
    assert unmatched == []
    places, unmatched = archive_places(saved, now, mounts[1:], _manifest("boot", "root", "srv"))
    assert [a.name for a, _m, _p in places] == ["root", "srv"]
    assert unmatched == ["/boot (archive boot, UUID u-/dev/vda2): not mounted by this machine's etc/fstab"]


def test_the_report_and_its_hwreport_section() -> None:
    files = FileDifferences(changed=[("/etc/x", "mode 0644 != 0600")], missing=["/a"], extra=["/b"])
    lines = report_lines(files, ["disk vda -> sda: size 6.0 GiB -> 8.0 GiB"], [])
    assert lines == ["1 changed, 1 missing, 1 extra files; 1 layout differences",
                     "changed: /etc/x (mode 0644 != 0600)", "missing: /a", "extra: /b",
                     "layout: disk vda -> sda: size 6.0 GiB -> 8.0 GiB"]  # fmt: skip
    many = FileDifferences(missing=[f"/m{i:04d}" for i in range(250)])
    shown = report_lines(many, [], ["/srv (archive srv, UUID u): not mounted"], limit=100)
    assert shown[:2] == ["0 changed, 250 missing, 0 extra files; 0 layout differences",
                         "not compared: /srv (archive srv, UUID u): not mounted"]  # fmt: skip
    assert len(shown) == 2 + 100 + 1 and shown[-1] == "missing: ... and 150 more"
    found = {"files": many, "layout": [], "unmatched": [], "compared": 900}
    sections = section_of(found, "/set")
    assert len(sections["full"]["missing"]) == 250 and len(sections["short"]["missing"]) == 100
    assert sections["short"]["counts"] == {"changed": 0, "missing": 250, "extra": 0, "layout": 0}
    assert sections["short"]["identical"] is False and sections["short"]["files_compared"] == 900
    same = section_of({"files": FileDifferences(), "layout": [], "unmatched": [], "compared": 3}, "/s")
    assert same["full"]["identical"] is True
