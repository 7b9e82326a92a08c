"""Step 5 of nuke: make the planned storage on the target disks: partition tables (sfdisk),
md RAID1 arrays (same UUID and name), LVM (the saved metadata, rewritten for the new sizes,
put back with `pvcreate --uuid` and `vgcfgrestore`), filesystems with their saved UUIDs,
labels and creation features, and swap.

`preflight()` runs before the first write: every mkfs option set is tried on a scratch file,
so a feature the rescue's mkfs lacks is refused with its name while the disks are untouched.
`Written` records each disk and filesystem as it is written, so a failure can say exactly what
was changed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from initrd_composer.boot.commands import CommandResult, Runner, run_command
from initrd_composer.boot.restore import RestoreRefused, StepFailed
from initrd_composer.boot.restore.lvm_metadata import pvcreate_argv, restore_metadata, vgcfgrestore_argv
from initrd_composer.boot.restore.mkfs_args import explain_preflight_failure, mkfs_argv, preflight_argv
from initrd_composer.boot.restore.sfdisk_script import sfdisk_script
from initrd_composer.boot.restore.sizing import RestorePlan, partition_name

WORK_DIR = Path("/run/initrd-composer/restore")
MKFS_TIMEOUT_S = 600.0
NODE_WAIT_S = 15.0



class WriteFailed(StepFailed):
    """Making the storage failed."""


@dataclass
class Written:
    """What the restore has changed so far, for the failure message and the report."""

    disks: list[str] = field(default_factory=list)  # /dev names, partition tables written
    filesystems: list[str] = field(default_factory=list)  # "/dev/vg0/root (ext4 /)"
    wiped: list[str] = field(default_factory=list)  # nopart: partitions whose signatures were wiped

    def describe(self) -> str:
        if not self.disks and not self.filesystems and not self.wiped:
            return "nothing was written"
        parts = [f"partition tables on {', '.join(self.disks)}"] if self.disks else []
        if self.wiped:
            parts.append(f"signatures wiped on {', '.join(self.wiped)}")
        if self.filesystems:
            parts.append(f"filesystems {', '.join(self.filesystems)}")
        return "written so far: " + "; ".join(parts)


@dataclass(frozen=True)
class FsTarget:
    """A saved filesystem and the device it is made on."""

    record: Mapping[str, Any]  # the layout's filesystems[] entry
    device: str  # its new device: /dev/nvme0n1p2, /dev/vg0/root, /dev/md0
    size_bytes: int  # the planned size of that device
    sector: int = 512  # the logical sector of the disk under it

    @property
    def what(self) -> str:
        mount = self.record.get("mountpoint") or (self.record.get("fstab") or {}).get("mountpoint") or ""
        return f"{self.device} ({' '.join(x for x in (str(self.record['type']), str(mount)) if x)})"


def planned_sizes(plan: RestorePlan) -> dict[str, tuple[int, int]]:
    """New device path -> (planned bytes, logical sector) of every partition, LV and array."""
    sizes: dict[str, tuple[int, int]] = {}
    sector_of: dict[str, int] = {}
    for disk in plan.disks:
        name = disk.assignment.target.name
        sector_of[name] = disk.assignment.target.logical_sector
        for p in disk.partitions:
            sizes[f"/dev/{partition_name(name, p.number)}"] = (p.new_bytes, p.sector)
    for vg in plan.vgs:
        for lv in vg.lvs:  # LVs sit on PVs of the planned disks: 512 unless all are 4Kn
            sizes[f"/dev/{vg.name}/{lv.name}"] = (lv.new_bytes, max(sector_of.values(), default=512))
    for md in plan.arrays:
        sector = max((sector_of.get(disk, 512) for disk, _n in md.members), default=512)
        sizes[f"/dev/{md.name}"] = (md.new_bytes, sector)
    return sizes


def fs_targets(layout: Mapping[str, Any], mapping: Mapping[str, str], plan: RestorePlan) -> list[FsTarget]:
    """Every saved filesystem (and swap) on its new device; LVM and md names stay as they were.
    A filesystem on a device the plan does not make is an error (the layout is inconsistent)."""
    sizes = planned_sizes(plan)
    targets = []
    for fs in layout["filesystems"]:
        device = mapping.get(str(fs["device"]), str(fs["device"]))
        if device not in sizes:
            raise RestoreRefused(
                f"saved filesystem {fs['device']} ({fs['type']}) lies on no device the restore makes",
                "restore this machine by hand from the expert shell",
            )
        size, sector = sizes[device]
        targets.append(FsTarget(fs, device, size, sector))
    return targets


def _check(result: CommandResult, what: str, written: Written) -> CommandResult:
    if not result.ok:
        raise WriteFailed(f"{what} failed: {result.describe()}", written.describe())
    return result


def preflight(targets: Sequence[FsTarget], runner: Runner = run_command) -> None:
    """Every mkfs option set tried on a sparse scratch file in /run as large as the filesystem
    will be (geometry and FAT cluster limits depend on it): RestoreRefused names the first the
    rescue's tools do not accept. Nothing on the target disks is touched."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    scratch = WORK_DIR / "preflight.img"
    for target in targets:
        with open(scratch, "wb") as f:
            f.truncate(target.size_bytes)
        try:
            argv = preflight_argv(target.record, str(scratch), sector=target.sector)
            result = runner(argv, timeout_s=MKFS_TIMEOUT_S)
        finally:
            scratch.unlink(missing_ok=True)
        if not result.ok:
            raise explain_preflight_failure(target.record, result.output)


def _wait_nodes(paths: Sequence[str], timeout_s: float = NODE_WAIT_S) -> list[str]:
    """Wait for device nodes to appear (devtmpfs makes them as the kernel adds partitions)."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [p for p in paths if not os.path.exists(p)]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


def release_targets(disks: Sequence[str], runner: Runner = run_command) -> None:
    """Deactivate volume groups and stop md arrays that sit on the disks about to be written
    (the storage stage activated whatever it found there, such as a previous restore's)."""
    from initrd_composer.boot.restore.targets import disks_under  # noqa: PLC0415

    names = {os.path.basename(d) for d in disks}
    listing = runner(["lvm", "pvs", "--noheadings", "-o", "pv_name,vg_name"], timeout_s=60)
    groups = set()
    for line in listing.output.splitlines() if listing.ok else []:
        fields = line.split()
        if len(fields) == 2 and disks_under(os.path.basename(os.path.realpath(fields[0]))) & names:
            groups.add(fields[1])
    for group in sorted(groups):
        runner(["lvm", "vgchange", "-an", "--sysinit", group], timeout_s=120)
    block = Path("/sys/class/block")
    for entry in sorted(block.iterdir()) if block.is_dir() else []:
        if entry.name.startswith("md") and disks_under(entry.name) & names:
            runner(["mdadm", "--stop", f"/dev/{entry.name}"], timeout_s=60)


def partition(
    plan: RestorePlan, layout: Mapping[str, Any], written: Written, runner: Runner = run_command
) -> None:
    if plan.in_place:
        keep_partitions(plan, written, runner)
        return
    by_name = {str(d["name"]): d for d in layout["disks"]}
    for disk in plan.disks:
        target = f"/dev/{disk.assignment.target.name}"
        script = sfdisk_script(disk, by_name[disk.assignment.source.name])
        written.disks.append(target)
        _check(
            runner(
                ["sfdisk", "--wipe", "always", "--wipe-partitions", "always", target],
                timeout_s=120,
                input_text=script,
            ),
            f"sfdisk {target}",
            written,
        )
        nodes = [f"/dev/{partition_name(disk.assignment.target.name, p.number)}" for p in disk.partitions]
        missing = _wait_nodes(nodes)
        if missing:
            raise WriteFailed(
                f"the kernel made no {', '.join(missing)} after sfdisk {target}", written.describe()
            )
        for node in nodes:  # stale signatures of what was there before (wipefs is not in busybox)
            _check(runner(["wipefs", "-a", "-q", node], timeout_s=60), f"wipefs {node}", written)


def keep_partitions(plan: RestorePlan, written: Written, runner: Runner = run_command) -> None:
    """nopart: no partition table is written; the planned partitions lose the signatures of
    what they held (an old array, PV or filesystem), the others are not touched."""
    for disk in plan.disks:
        for p in disk.partitions:
            node = f"/dev/{partition_name(disk.assignment.target.name, p.number)}"
            if not os.path.exists(node):
                raise WriteFailed(f"nopart: {node} is gone since the plan was made", written.describe())
            written.wiped.append(node)
            _check(runner(["wipefs", "-a", "-q", node], timeout_s=60), f"wipefs {node}", written)


def build_arrays(
    plan: RestorePlan, layout: Mapping[str, Any], written: Written, runner: Runner = run_command
) -> None:
    saved = {os.path.basename(str(a["device"])): a for a in layout["md_arrays"]}
    for md in plan.arrays:
        record = saved[md.name]
        members = [f"/dev/{partition_name(disk, number)}" for disk, number in md.members]
        argv = [
            "mdadm",
            "--create",
            f"/dev/{md.name}",
            "--run",
            "--level",
            "1",
            "--metadata",
            str(record.get("metadata") or "1.2"),
            "--raid-devices",
            str(len(members)),
            "--homehost",
            "<ignore>",
            "--assume-clean",
        ]
        if record.get("uuid"):
            argv += ["--uuid", str(record["uuid"])]
        if record.get("name"):
            argv += ["--name", str(record["name"]).rsplit(":", 1)[-1]]
        _check(runner([*argv, *members], timeout_s=120), f"mdadm --create /dev/{md.name}", written)
        written.disks.append(f"/dev/{md.name}")


def build_volume_groups(
    plan: RestorePlan,
    layout: Mapping[str, Any],
    mapping: Mapping[str, str],
    written: Written,
    runner: Runner = run_command,
) -> None:
    saved = {str(g["name"]): g for g in layout["lvm"]["volume_groups"]}
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    for vg in plan.vgs:
        group = saved[vg.name]
        pvs = [(mapping.get(str(pv["device"]), str(pv["device"])), str(pv["uuid"])) for pv in group["pvs"]]
        sizes = {uuid: _device_bytes(device) for device, uuid in pvs}
        text = restore_metadata(str(group["vgcfgbackup"]), vg, sizes)
        backup = WORK_DIR / f"{vg.name}.vgcfg"
        backup.write_text(text)
        # --devices: LVM looks at these PVs only, so a VG of the same name elsewhere (the
        # restore set's disk, a disk left alone) cannot get in the way
        only = ["--devices", ",".join(device for device, _uuid in pvs)]
        for device, uuid in pvs:
            _check(
                runner(pvcreate_argv(device, uuid, str(backup), only), timeout_s=120),
                f"pvcreate {device}",
                written,
            )
        _check(
            runner(vgcfgrestore_argv(vg.name, str(backup), only), timeout_s=120),
            f"vgcfgrestore {vg.name}",
            written,
        )
        _check(
            runner(["lvm", "vgchange", "-ay", "--sysinit", *only, vg.name], timeout_s=120),
            f"vgchange -ay {vg.name}",
            written,
        )
        runner(["lvm", "vgscan", "--mknodes"], timeout_s=60)
        nodes = [f"/dev/{vg.name}/{lv.name}" for lv in vg.lvs]
        missing = _wait_nodes(nodes)
        if missing:
            raise WriteFailed(f"no {', '.join(missing)} after activating {vg.name}", written.describe())


def _device_bytes(device: str) -> int:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def make_filesystems(targets: Sequence[FsTarget], written: Written, runner: Runner = run_command) -> None:
    for target in targets:
        argv = mkfs_argv(target.record, target.device, sector=target.sector)
        written.filesystems.append(target.what)
        _check(runner(argv, timeout_s=MKFS_TIMEOUT_S), f"making {target.what}", written)


def refuse_busy(plan: RestorePlan) -> None:
    """A target disk must not be in use by the rescue system (checked again just before the
    first write: the planner's view was read a moment earlier)."""
    mounts = Path("/proc/self/mounts").read_text() if Path("/proc/self/mounts").exists() else ""
    for disk in plan.disks:
        name = disk.assignment.target.name
        for line in mounts.splitlines():
            source = line.split()[0]
            if source.startswith(f"/dev/{name}"):
                raise RestoreRefused(
                    f"target disk /dev/{name} is in use: {source} is mounted",
                    "unmount it from the shell and run the restore again",
                )
