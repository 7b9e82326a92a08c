"""The capture session's planning on mountinfo fixtures (bind mounts, tmpfs, NFS, images, the
output inside a captured filesystem or on its own), the whole disks under the mounts on a fake
/sys, and run_capture() writing a loadable set from plain directories."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.restore_set.layout import LAYOUT_NAME
from initrd_composer.boot.restore_set.manifest import check_extra, load_set, set_layout
from initrd_composer.capture.archive_children import ArchiveDone
from initrd_composer.capture.archive_write import excluded
from initrd_composer.capture.errors import CaptureError
from initrd_composer.capture.layout.document import new_layout
from initrd_composer.capture.layout.filesystems import parse_mountinfo
from initrd_composer.capture.session import (
    CapturePlan,
    extra_files,
    plan_capture,
    rebase_exclude,
    run_capture,
    source_disks,
)

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs udev rw,size=1k
27 1 8:2 / / rw,relatime - ext4 /dev/sda2 rw,errors=remount-ro
28 27 8:1 / /boot rw,relatime - ext4 /dev/sda1 rw
29 28 8:3 / /boot/efi rw,relatime - vfat /dev/sda3 rw,fmask=0077
30 27 253:0 / /srv rw,relatime - xfs /dev/mapper/vg0-srv rw
31 27 0:40 / /tmp rw,nosuid - tmpfs tmpfs rw
32 27 0:41 / /mnt/nas rw,relatime - nfs4 nas:/export rw,vers=4.2
33 27 253:0 /www /var/www rw,relatime - xfs /dev/mapper/vg0-srv rw
34 27 8:17 / /media/usb rw,relatime - ext4 /dev/sdb1 rw
35 27 7:0 / /snap/core/1 ro,relatime - squashfs /dev/loop0 ro
36 27 0:50 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw,lowerdir=/a
37 27 8:5 / /var/lib/x rw,relatime - ext4 /dev/sda5 rw
38 27 8:2 / /mnt/root-again rw,relatime - ext4 /dev/sda2 rw
39 27 0:55 / /run/user/1000 rw - tmpfs tmpfs rw
"""


def _fs(device: str, kind: str, used: int | None = None, **more: Any) -> dict[str, Any]:
    return {"device": device, "type": kind, "uuid": None, "label": None, "mountpoint": None, "features": None,
            "fstab": None, "used_bytes": used, "size_bytes": None, "partuuid": None, "partlabel": None,
            "version": None, "esp": False, **more}  # fmt: skip


def _layout(*fss: dict[str, Any], refused: list[dict[str, str]] | None = None) -> dict[str, Any]:
    disk = {"name": "sda", "path": "/dev/sda", "size_bytes": 500_107_862_016, "logical_sector_size": 512,
            "partition_table": None, "boot_sector": {}, "gap": None}  # fmt: skip
    return {"disks": [disk], "filesystems": list(fss), "refused": refused or []}


LAYOUT = _layout(
    _fs("/dev/sda1", "ext4", 80_000_000), _fs("/dev/sda2", "ext4", 3_000_000_000),
    _fs("/dev/sda3", "vfat", 6_000_000, esp=True), _fs("/dev/sda4", "swap"),
    _fs("/dev/vg0/srv", "xfs", 12_000_000_000), _fs("/dev/sda5", "ext4", 1_000),
    _fs("/dev/sda6", "ext4", None),
)


def _plan(output: str = "/mnt/nas/sets/host1", excludes: tuple[str, ...] = (), root: str = "/",
          mountinfo: str = MOUNTINFO, layout: dict[str, Any] = LAYOUT) -> CapturePlan:  # fmt: skip
    return plan_capture(layout, parse_mountinfo(mountinfo), root=root, output=output, excludes=excludes)


def test_local_filesystems_are_archived_once_each_named_by_mount_point() -> None:
    plan = _plan()
    got = [(i.name, i.device, i.type, i.mountpoint, str(i.path), i.used_bytes, i.file) for i in plan.items]
    assert got == [
        ("root", "/dev/sda2", "ext4", "/", "/", 3_000_000_000, "root.pax.zst"),
        ("boot", "/dev/sda1", "ext4", "/boot", "/boot", 80_000_000, "boot.pax.zst"),
        ("boot-efi", "/dev/sda3", "vfat", "/boot/efi", "/boot/efi", 6_000_000, "boot-efi.pax.zst"),
        # /srv is /dev/mapper/vg0-srv in the mount table, /dev/vg0/srv in the layout
        ("srv", "/dev/vg0/srv", "xfs", "/srv", "/srv", 12_000_000_000, "srv.pax.zst"),
        ("var-lib-x", "/dev/sda5", "ext4", "/var/lib/x", "/var/lib/x", 1_000, "var-lib-x.pax.zst"),
    ]
    assert all(i.excludes == () for i in plan.items)  # the output is on NFS
    assert plan.total_bytes == 3_000_000_000 + 80_000_000 + 6_000_000 + 12_000_000_000 + 1_000
    assert plan.swap == ("/dev/sda4",) and plan.uncaptured == (("/dev/sda6", "ext4"),)


def test_what_is_skipped_and_why() -> None:
    why = {s.mountpoint: s.why for s in _plan().skipped}
    assert why == {
        "/proc": "proc is not a disk filesystem the capture archives",
        "/sys": "sysfs is not a disk filesystem the capture archives",
        "/dev": "devtmpfs is not a disk filesystem the capture archives",
        "/tmp": "in memory",
        "/run/user/1000": "in memory",
        "/mnt/nas": "network filesystem",
        "/var/www": "/www of /dev/vg0/srv, captured at /srv",  # a bind mount: captured once
        "/mnt/root-again": "/ of /dev/sda2, captured at /",
        "/media/usb": "not on the captured disks",
        "/snap/core/1": "an image or overlay, not a disk filesystem",
        "/var/lib/docker/overlay2/x/merged": "an image or overlay, not a disk filesystem",
    }


def test_output_inside_srv_is_excluded_from_srv_only() -> None:
    plan = _plan(output="/srv/backups/set")
    assert {i.name: i.excludes for i in plan.items}["srv"] == ("/backups/set",)
    assert [i.excludes for i in plan.items if i.name != "srv"] == [()] * 4
    # Reached through the bind mount of /srv/www, the same directory of the same filesystem:
    assert {i.name: i.excludes for i in _plan(output="/var/www/sets").items}["srv"] == ("/www/sets",)
    assert {i.name: i.excludes for i in _plan(output="/var/backups/x").items}["root"] == ("/var/backups/x",)


def test_output_on_its_own_filesystem_root_is_refused() -> None:
    with pytest.raises(CaptureError, match=r"the output /srv is the root of /srv \(/dev/vg0/srv\)") as exc:
        _plan(output="/srv")
    assert "another filesystem" in exc.value.hint
    assert all(i.excludes == () for i in _plan(output="/media/usb/sets").items)  # not captured: nothing to do


def test_output_names_with_glob_characters_are_escaped() -> None:
    (pattern,) = {i.name: i.excludes for i in _plan(output="/srv/a[1]*?/set").items}["srv"]
    assert pattern == "/a[[]1][*][?]/set"
    assert excluded("a[1]*?/set", [pattern]) and not excluded("a1xy/set", [pattern])


def test_user_excludes_are_rebased_onto_each_filesystem() -> None:
    plan = _plan(excludes=("*.tmp", "/var/cache/*", "/srv/scratch", "boot/efi/EFI/old*", "/var/lib/x"))
    excl = {i.name: i.excludes for i in plan.items}
    assert excl == {
        "root": ("*.tmp", "/var/cache/*", "/srv/scratch", "/boot/efi/EFI/old*", "/var/lib/x"),
        "boot": ("*.tmp", "/efi/EFI/old*"),
        "boot-efi": ("*.tmp", "/EFI/old*"),
        "srv": ("*.tmp", "/scratch"),
    }
    # /var/lib/x names the mount point: that filesystem is not captured at all.
    assert {s.mountpoint: s.why for s in plan.skipped}["/var/lib/x"] == "excluded by --exclude /var/lib/x"
    assert ("/dev/sda5", "ext4") not in plan.uncaptured


def test_rebase_exclude() -> None:
    assert rebase_exclude("*.log", "") == "*.log" and rebase_exclude("*.log", "srv") == "*.log"
    assert rebase_exclude("lost+found", "srv") == "lost+found"
    assert rebase_exclude("srv", "srv") is True  # a name pattern matching the mount point
    assert rebase_exclude("var/cache/*", "") == "/var/cache/*"
    assert rebase_exclude("/var/cache/*", "var/cache") == "/*"
    assert rebase_exclude("/var/*", "var/lib/x") is True  # a directory above the mount point
    assert rebase_exclude("/*/data/*.bak", "srv") == "/data/*.bak"
    assert rebase_exclude("/home/*", "srv") is None


def test_a_tree_mounted_elsewhere_names_its_filesystems_relative_to_root() -> None:
    mountinfo = "\n".join([
        "27 1 8:2 / / rw - ext4 /dev/sda2 rw",
        "40 27 7:1 / /mnt/target rw - ext4 /dev/loop1p2 rw",
        "41 40 7:1 / /mnt/target/srv\\040data rw - xfs /dev/loop1p3 rw",
        "42 40 7:1 / /mnt/target/var-lib rw - ext4 /dev/loop1p4 rw",
        "43 40 7:1 / /mnt/target/var/lib rw - ext4 /dev/loop1p5 rw",
        "44 40 7:1 / /mnt/target/root rw - ext4 /dev/loop1p6 rw",
        "45 40 7:1 / /mnt/target/.hidden rw - ext4 /dev/loop1p7 rw",
        "",
    ])  # fmt: skip
    layout = _layout(*(_fs(f"/dev/loop1p{n}", "xfs" if n == 3 else "ext4", 1) for n in range(2, 8)))
    plan = _plan(root="/mnt/target", mountinfo=mountinfo, layout=layout, output="/mnt/target/srv data/x")
    assert [(i.name, i.mountpoint) for i in plan.items] == [
        ("root", "/"), ("fs.hidden", "/.hidden"), ("root-2", "/root"), ("srv_data", "/srv data"),
        ("var-lib", "/var-lib"), ("var-lib-2", "/var/lib"),
    ]
    assert {i.name: i.excludes for i in plan.items}["srv_data"] == ("/x",)
    assert plan.skipped == ()  # the host's own / is outside the root


def test_btrfs_subvolumes_one_archive_per_filesystem() -> None:
    mountinfo = "\n".join([
        "27 1 0:33 /@ / rw - btrfs /dev/sda7 rw,subvol=/@",
        "28 27 0:33 /@home /home rw - btrfs /dev/sda7 rw,subvol=/@home",
        "",
    ])  # fmt: skip
    plan = _plan(mountinfo=mountinfo, layout=_layout(_fs("/dev/sda7", "btrfs", 5)), output="/home/u/set")
    (item,) = plan.items
    assert (item.name, item.source_root, item.excludes) == ("root", "/@", ())  # the output is in @home
    assert [(s.mountpoint, s.why) for s in plan.skipped] == [("/home", "/@home of /dev/sda7, captured at /")]
    assert "[subvolume /@]" in "\n".join(plan.lines())


def test_a_directory_bind_mounted_alone_is_not_taken_for_the_filesystem() -> None:
    mountinfo = "27 1 8:2 / / rw - ext4 /dev/sda2 rw\n30 27 8:9 /exports/a /data rw - ext4 /dev/sda9 rw\n"
    layout = _layout(_fs("/dev/sda2", "ext4", 1), _fs("/dev/sda9", "ext4", 1))
    plan = _plan(mountinfo=mountinfo, layout=layout)
    assert [i.name for i in plan.items] == ["root"]
    assert "only the directory /exports/a of /dev/sda9 is mounted" in plan.skipped[0].why


def test_dry_run_lines() -> None:
    luks = {"kind": "signature", "name": "/dev/sdc", "reason": "LUKS encrypted"}
    plan = _plan(output="/srv/sets", excludes=("*.tmp",), layout={**LAYOUT, "refused": [luks]})
    text = "\n".join(plan.lines())
    assert text.startswith("capture of / into /srv/sets\ndisks: /dev/sda (500.1 GB)\nfilesystems:\n")
    assert "  name       device        type  mount point  used     archive" in text
    assert "  srv        /dev/vg0/srv  xfs   /srv         12.0 GB  srv.pax.zst" in text
    assert "  srv: excludes *.tmp, /sets" in text
    assert "swap: /dev/sda4 (recorded in the layout, not archived)" in text
    assert "not captured: /dev/sda6 (ext4): not mounted under /" in text
    assert "skipped: /mnt/nas (nfs4, nas:/export): network filesystem" in text
    assert "excludes: *.tmp" in text and "refused by a restore: LUKS encrypted (/dev/sdc)" in text
    assert "output: /srv/sets (left out of srv as /sets)" in text
    assert "output: /mnt/nas/sets/host1\n" in "\n".join(_plan().lines())
    assert text.endswith("total: 15.1 GB used in 5 filesystems")


def _sys(base: Path, disks: dict[str, list[str]], parts: dict[str, str], numbers: dict[str, str]) -> Path:
    """A fake /sys/class/block: disks (with slaves), partitions linking under their disk."""
    devices, block = base / "devices", base / "class-block"
    block.mkdir(parents=True)
    for name, slaves in disks.items():
        (devices / name / "slaves").mkdir(parents=True)
        for s in slaves:
            (devices / name / "slaves" / s).mkdir()
        (block / name).symlink_to(devices / name)
    for name, disk in parts.items():
        (devices / disk / name).mkdir()
        (devices / disk / name / "partition").write_text("1\n")
        (block / name).symlink_to(devices / disk / name)
    for name, number in numbers.items():
        (block / name / "dev").write_text(number + "\n")
    return block


def test_source_disks_through_partitions_lvm_and_md(tmp_path: Path) -> None:
    block = _sys(
        tmp_path,
        disks={"sda": [], "sdb": [], "sdc": [], "sdd": [], "sde": [], "dm-0": ["sdb2", "md0"],
               "md0": ["sdc1", "sdd1"]},
        parts={"sda1": "sda", "sda2": "sda", "sdb2": "sdb", "sdc1": "sdc", "sdd1": "sdd", "sde1": "sde"},
        numbers={"sda1": "8:1", "sda2": "8:2", "dm-0": "253:0"},
    )
    mountinfo = "\n".join([
        "27 1 8:2 / / rw - ext4 /dev/sda2 rw",
        "28 27 8:1 / /boot rw - ext4 /dev/sda1 rw",
        "29 27 253:0 / /srv rw - xfs /dev/mapper/vg0-srv rw",  # no such node here: found by number
        "30 27 0:40 / /tmp rw - tmpfs tmpfs rw",
        "31 1 8:65 / /mnt/e rw - ext4 /dev/sde1 rw",
        "",
    ])  # fmt: skip
    mounts = parse_mountinfo(mountinfo)
    # In the order found; the LV's slaves in name order: md0 (sdc1, sdd1), then sdb2.
    found = source_disks(mounts, "/", sys_block=block)
    assert found == ["/dev/sda", "/dev/sdc", "/dev/sdd", "/dev/sdb", "/dev/sde"]
    assert source_disks(mounts, "/srv", sys_block=block) == ["/dev/sdc", "/dev/sdd", "/dev/sdb"]


# -- run_capture on plain directories ----------------------------------------------------------


def _real_layout(gap: bool, mounts: tuple[str | None, ...] = (None,) * 4) -> dict[str, Any]:
    disk = {"name": "vda", "path": "/dev/vda", "size_bytes": 1 << 30, "logical_sector_size": 512,
            "partition_table": None, "boot_sector": {"grub": False},
            "gap": {"file": "disk-vda-gap.bin", "size_bytes": 4, "sha256": "x"} if gap else None}  # fmt: skip
    fss = [_fs(f"/dev/vda{n + 1}", "ext4", 10, mountpoint=m) for n, m in enumerate(mounts)]
    fss[2] = _fs("/dev/vda3", "swap")
    return new_layout(disks=[disk], md_arrays=[], volume_groups=[], fstab=None, bootloader={}, refused=[],
                      filesystems=fss)  # fmt: skip


class _Seen:
    def __init__(self) -> None:
        self.done: list[int] = []
        self.archives: list[str] = []

    def advance(self, done_bytes: int) -> None:
        self.done.append(done_bytes)

    def archived(self, done: ArchiveDone) -> None:
        self.archives.append(done.record.name)


def test_run_capture_writes_a_set_a_restore_can_read(tmp_path: Path) -> None:
    machine = tmp_path / "machine"
    (machine / "etc").mkdir(parents=True)
    (machine / "etc" / "hostname").write_text("h\n")
    (machine / "big").write_bytes(os.urandom(3 << 20))
    (tmp_path / "bootfs").mkdir()
    (tmp_path / "bootfs" / "vmlinuz").write_bytes(b"k" * 1000)
    gaps = tmp_path / "gaps"
    gaps.mkdir()
    (gaps / "disk-vda-gap.bin").write_bytes(b"grub")
    mountinfo = (f"27 1 254:1 / {machine} rw - ext4 /dev/vda1 rw\n"
                 f"28 27 254:2 / {machine}/boot rw - ext4 /dev/vda2 rw\n")  # fmt: skip
    layout = _real_layout(gap=True, mounts=(str(machine), f"{machine}/boot", None, "/mnt/elsewhere"))
    plan = plan_capture(layout, parse_mountinfo(mountinfo), root=machine, output=machine / "sets" / "one")
    assert [(i.name, i.excludes) for i in plan.items] == [("root", ("/sets/one",)), ("boot", ())]
    boot = replace(plan.items[1], path=tmp_path / "bootfs")  # here, boot's files are elsewhere
    plan = replace(plan, items=(plan.items[0], boot))
    seen = _Seen()
    out = machine / "sets" / "one"
    result = run_capture(plan, out, layout, gaps, seen, threads=1)

    manifest = load_set(out)
    assert manifest == result.manifest
    assert [e.file for e in manifest.extras] == [LAYOUT_NAME, "disk-vda-gap.bin"]
    for extra in manifest.extras:
        check_extra(out, extra)
    doc = set_layout(out, manifest)
    # each names its archive; mount points are the machine's, not where the capture found them
    assert [(fs["device"], fs["archive"], fs["mountpoint"]) for fs in doc["filesystems"]] == [
        ("/dev/vda1", "root", "/"), ("/dev/vda2", "boot", "/boot"), ("/dev/vda3", None, None),
        ("/dev/vda4", None, None)]  # fmt: skip
    assert "archive" not in layout["filesystems"][0]  # the caller's layout is left alone
    assert layout["filesystems"][0]["mountpoint"] == str(machine)
    assert not any(r.path.startswith("sets") and r.path != "sets" for r in manifest.archive("root").files)
    assert seen.archives == ["root", "boot"]
    assert seen.done[-1] == result.data_bytes >= (3 << 20) + 1000 and seen.done == sorted(seen.done)
    assert 3 <= len(seen.done) <= 8  # about one call per MiB, not one per file
    assert result.files == len(manifest.archive("root").files) + len(manifest.archive("boot").files)
    summary = result.summary(out)
    assert summary.startswith(f"captured 2 filesystems into {out}: {result.files} files, 3.1 MB of data")
    assert json.loads((out / "layout.json").read_text())["filesystems"][2]["archive"] is None


def test_raw_files_the_layout_names_must_be_there(tmp_path: Path) -> None:
    layout = _real_layout(gap=True)
    with pytest.raises(CaptureError, match=r"names disk-vda-gap\.bin, which is not in"):
        extra_files(layout, tmp_path)
    with pytest.raises(CaptureError, match=r"names disk-vda-gap\.bin"):
        extra_files(layout, None)
    assert extra_files(_real_layout(gap=False), None) == []
