"""Run the storage tools over a set of disks (block devices or disk image files) and gather
their output into a layout document. The runner, the byte reader and every host path are
injected; the parsing is in the sibling modules."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from initrd_composer.boot.commands import run_command
from initrd_composer.capture.errors import CaptureError
from initrd_composer.capture.layout import LayoutError, bootloader, filesystems, partitions, volumes
from initrd_composer.capture.layout.document import new_layout

Runner = Callable[[list[str]], str]
ByteReader = Callable[[str, int, int], bytes]

_EXT = frozenset({"ext2", "ext3", "ext4"})
# Member signatures a restore cannot rebuild (it would need their keys or the firmware RAID's
# metadata): named in the layout's refused list. md and LVM members are described instead.
_REFUSED_SIGNATURES = {
    "crypto_LUKS": "LUKS encrypted",
    "ddf_raid_member": "firmware RAID (DDF)",
    "isw_raid_member": "firmware RAID (Intel)",
}


class ToolFailed(CaptureError):
    """A storage tool that could not run or exited non-zero."""

    def __init__(self, message: str, hint: str = "", *, started: bool = True) -> None:
        super().__init__(message, hint)
        self.started = started  # False: the tool is missing, which no caller may ignore


def run_tool(argv: list[str], timeout_s: float = 120.0) -> str:
    """The default runner: the boot side's command helper (the collector runs inside the rescue
    image too), output as text; raises ToolFailed naming the command."""
    result = run_command(argv, timeout_s=timeout_s, split_stderr=True)
    if not result.ok:
        started = not (result.returncode == -1 and result.output.startswith("cannot run"))
        raise ToolFailed(f"command failed: {result.describe()}",
                         "is the device readable and the tool installed?", started=started)  # fmt: skip
    return result.output


def read_device_bytes(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


@dataclass(frozen=True)
class HostPaths:
    """Where the collector looks on the host; tests point these at fixtures."""

    source_root: Path | None = None  # the captured system's root, for etc/fstab; None: no fstab
    mountinfo: Path = Path("/proc/self/mountinfo")
    mdstat: Path = Path("/proc/mdstat")
    efi_firmware: Path = Path("/sys/firmware/efi")


@dataclass
class _Context:
    runner: Runner
    read_bytes: ByteReader
    paths: HostPaths
    mounts: list[dict[str, str]] = field(default_factory=list)


def _probe(ctx: _Context, argv: list[str]) -> dict[str, str]:
    """blkid export of one device; {} when blkid finds nothing (it exits 2 then). A missing
    blkid is still an error: the runner says "cannot run", not "command failed"."""
    try:
        found = filesystems.parse_blkid_export(ctx.runner(argv))
    except ToolFailed as exc:
        if exc.started:
            return {}
        raise
    for key in ("LABEL", "PART_ENTRY_NAME"):
        # `-o export` prints bytes >= 0x80 in cat -v's M- notation (a non-ASCII label would
        # come back mangled); `-o value` prints the label as it is
        if any(mark in found.get(key, "") for mark in ("M-", "^")):
            at = argv.index("export")
            found[key] = ctx.runner([*argv[:at], "value", "-s", key, *argv[at + 1 :]]).rstrip("\n")
    return found


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _dev_number(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISBLK(st.st_mode) else None


def _mountpoint(ctx: _Context, device: str) -> str | None:
    number = _dev_number(device)
    real = os.path.realpath(device)
    for mount in ctx.mounts:
        # The whole filesystem's mount, not a bind mount of a directory inside it.
        if mount["root"] == "/" and (mount["dev"] == number or os.path.realpath(mount["source"]) == real):
            return mount["mountpoint"]
    return None


def _disk(ctx: _Context, disk: str, gap_dir: Path | None) -> dict[str, Any]:
    name = Path(disk).name
    image = Path(disk).is_file()
    if image:
        info: dict[str, Any] = {
            "name": name,
            "size_bytes": Path(disk).stat().st_size,
            "logical_sector_size": 512,
            "physical_sector_size": 512,
            "model": None,
            "serial": None,
            "wwn": None,
        }
    else:
        info = partitions.parse_lsblk_disk(ctx.runner(["lsblk", "--json", "-b", "-O", "--nodeps", disk]))
    info["path"] = disk
    info["image"] = image
    probe = _probe(ctx, ["blkid", "-p", "-o", "export", disk])
    table = None
    if probe.get("PTTYPE") in ("gpt", "dos"):
        table = partitions.parse_sfdisk_json(ctx.runner(["sfdisk", "--json", disk]))
    elif probe.get("PTTYPE"):
        raise LayoutError(
            f"{disk}: a {probe['PTTYPE']} partition table, not gpt or dos",
            f"a restore recreates only gpt and dos tables: leave {disk} out of the capture",
        )
    info["partition_table"] = table
    info["boot_sector"] = bootloader.boot_sector(ctx.read_bytes(disk, 0, bootloader.SECTOR))
    info["gap"] = None
    start = partitions.first_partition_start(table) if table else None
    if table and start:
        end = start * table["sector_size"]
        if end > bootloader.SECTOR:
            gap = ctx.read_bytes(disk, bootloader.SECTOR, end - bootloader.SECTOR)
            info["gap"] = bootloader.gap_record(gap, name)
            if gap_dir is not None:
                (gap_dir / info["gap"]["file"]).write_bytes(gap)
    ss = table["sector_size"] if table else 512
    for p in table["partitions"] if table else []:
        p["raw"] = None
        if p["bios_boot"]:
            content = ctx.read_bytes(disk, p["start"] * ss, p["size"] * ss)
            p["raw"] = bootloader.bios_boot_record(content, name, p["number"])
            if gap_dir is not None:
                (gap_dir / p["raw"]["file"]).write_bytes(content)
    return info


def _features(ctx: _Context, fs: dict[str, Any]) -> dict[str, Any] | None:
    kind, device, mountpoint = fs["type"], fs["device"], fs["mountpoint"]
    if kind in _EXT:
        return filesystems.parse_dumpe2fs(ctx.runner(["dumpe2fs", "-h", device]))
    if kind == "xfs":
        # xfs_db reads the superblock, mounted or not (xfs_info is a shell script around it
        # and xfs_spaceman, which the rescue image does not carry)
        argv = ["xfs_db", "-r", "-c", "info", device]
        return filesystems.parse_xfs_info(ctx.runner(argv))
    if kind == "btrfs":
        if not mountpoint:
            return {"subvolumes": None}  # listing subvolumes needs the filesystem mounted
        out = ctx.runner(["btrfs", "subvolume", "list", "-p", "-u", mountpoint])
        return {"subvolumes": filesystems.parse_btrfs_subvolumes(out)}
    if kind == "vfat":
        return {"fat_size": fs["version"]}
    return None


def _filesystem(
    ctx: _Context, device: str, probe: dict[str, str], image: tuple[str, int, int] | None
) -> dict[str, Any]:
    fs = filesystems.identity(probe)
    fs["device"] = device
    fs["partuuid"] = probe.get("PART_ENTRY_UUID")
    fs["partlabel"] = probe.get("PART_ENTRY_NAME")
    fs["mountpoint"] = None if image else _mountpoint(ctx, device)
    fs["used_bytes"] = fs["size_bytes"] = None
    if fs["mountpoint"] and fs["type"] != "swap":
        sv = os.statvfs(fs["mountpoint"])
        fs["size_bytes"] = sv.f_blocks * sv.f_frsize
        fs["used_bytes"] = (sv.f_blocks - sv.f_bfree) * sv.f_frsize
    # The tools read devices, not offsets inside an image file.
    fs["features"] = None if image else _features(ctx, fs)
    if image:
        fs["image_offset_bytes"], fs["image_size_bytes"] = image[1], image[2]
    return fs


def _blkid_argv(device: str, image: tuple[str, int, int] | None) -> list[str]:
    if image is None:
        return ["blkid", "-p", "-o", "export", device]
    return ["blkid", "-p", "-o", "export", "-O", str(image[1]), "-S", str(image[2]), image[0]]


def _volumes_on(
    ctx: _Context, devices: set[str], *, pv_seen: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """md arrays and VGs with a member among devices (so the host's own stay out). LVM is
    asked only where a PV can be: an LVM2_member signature on a device (`pv_seen`) or an
    array, whose content blkid has not probed yet (three lvm commands cost a tenth of a second)."""
    real = {os.path.realpath(d) for d in devices}
    arrays = []
    mdstat = _read_text(ctx.paths.mdstat)
    if mdstat:
        details = {}
        for array in volumes.parse_mdstat(mdstat):
            if array.active:
                details[array.name] = ctx.runner(["mdadm", "--detail", "--export", "/dev/" + array.name])
        arrays = [
            a
            for a in volumes.md_arrays(mdstat, details)
            if any(os.path.realpath(m["device"]) in real for m in a["members"])
        ]
    real |= {os.path.realpath(a["device"]) for a in arrays}
    if not pv_seen and not arrays:
        return arrays, []
    units = ["--reportformat", "json", "--units", "b", "--nosuffix", "-o"]
    groups = volumes.lvm_summary(
        ctx.runner(["lvm", "vgs", *units, "vg_name,vg_uuid,vg_extent_size,vg_size"]),
        ctx.runner(["lvm", "pvs", *units, "pv_name,pv_uuid,pv_size,vg_name"]),
        ctx.runner(
            [
                "lvm",
                "lvs",
                "-a",
                *units,
                "lv_name,vg_name,lv_uuid,lv_size,segtype,pool_lv,origin,lv_attr,seg_count",
            ]
        ),
    )
    groups = [g for g in groups if any(os.path.realpath(pv["device"] or "") in real for pv in g["pvs"])]
    for group in groups:
        with tempfile.TemporaryDirectory(prefix="layout-vg-") as tmp:
            target = Path(tmp) / "vg.txt"
            ctx.runner(["lvm", "vgcfgbackup", "-f", str(target), group["name"]])
            text = target.read_text()
        name, uuid = volumes.vgcfgbackup_identity(text)
        if (name, uuid) != (group["name"], group["uuid"]):
            raise LayoutError(f"vgcfgbackup of {group['name']} describes {name} ({uuid})")
        group["vgcfgbackup"] = text
    return arrays, groups


def _bootloader(ctx: _Context, disks: list[dict[str, Any]], fss: list[dict[str, Any]]) -> dict[str, Any]:
    esps = [fs for fs in fss if fs.get("esp")]
    loaders = []
    for esp in esps:
        if esp["mountpoint"]:
            root = Path(esp["mountpoint"])
            loaders += sorted(
                "/" + p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() == ".efi"
            )
    uefi_booted = ctx.paths.efi_firmware.is_dir()
    nvram = bootloader.parse_efibootmgr(ctx.runner(["efibootmgr", "-v"])) if uefi_booted else None
    return {
        "bios_grub_disks": [d["name"] for d in disks if d["boot_sector"]["grub"]],
        "bios_boot_partitions": [
            p["node"]
            for d in disks
            if d["partition_table"]
            for p in d["partition_table"]["partitions"]
            if p["bios_boot"]
        ],
        "uefi": {
            "booted_uefi": uefi_booted,
            "esps": [fs["device"] for fs in esps],
            "loaders": loaders,
            "nvram": nvram,
        },
    }


Place = tuple[str, tuple[str, int, int] | None, bool]  # device, (image, offset, size) or None, is ESP


def _places(disk_docs: list[dict[str, Any]]) -> list[Place]:
    """Every place a filesystem may sit on these disks: each partition, or the whole disk."""
    places: list[Place] = []
    for d in disk_docs:
        table = d["partition_table"]
        if table is None:
            places.append((d["path"], None, False))
            continue
        ss = table["sector_size"]
        for p in table["partitions"]:
            image = (d["path"], p["start"] * ss, p["size"] * ss) if d["image"] else None
            places.append((p["node"], image, p["esp"]))
    return places


def _attach_fstab(fss: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """Each fstab entry names its device, each filesystem gets its entry (None without one).
    A /dev path in fstab may be another name of the device (/dev/mapper/vg-lv, /dev/disk/...)."""
    for fs in fss:
        fs["fstab"] = None
    for entry in entries:
        entry["device"] = None
        spec = entry["spec"]
        for fs in fss:
            aliases = {fs["device"], os.path.realpath(fs["device"])}
            if filesystems.fstab_matches(spec, fs, aliases) or (
                spec.startswith("/dev/") and os.path.realpath(spec) in aliases
            ):
                entry["device"], fs["fstab"] = fs["device"], {k: v for k, v in entry.items() if k != "device"}
                break


def collect_layout(
    disks: Sequence[str],
    *,
    runner: Runner = run_tool,
    read_bytes: ByteReader = read_device_bytes,
    paths: HostPaths | None = None,
    gap_dir: Path | None = None,
) -> dict[str, Any]:
    """gap_dir: where the raw bytes no archive holds are written (disk-NAME-gap.bin,
    disk-NAME-partN-bios-boot.bin); None records only their size and hash.

    The layout of these disks (/dev/sda, or disk image files) and what is stacked on them:
    md arrays and VGs with a member among them, the filesystems on all of it. Image files get
    no md or LVM (that needs their devices) and no filesystem features."""
    ctx = _Context(runner, read_bytes, paths or HostPaths())
    ctx.mounts = filesystems.parse_mountinfo(_read_text(ctx.paths.mountinfo) or "")
    disk_docs = [_disk(ctx, d, gap_dir) for d in disks]
    places = _places(disk_docs)
    fss: list[dict[str, Any]] = []
    contents: dict[str, str | None] = {}
    for device, image, esp in places:
        probe = _probe(ctx, _blkid_argv(device, image))
        contents[device] = probe.get("TYPE")
        if probe.get("TYPE") and probe["TYPE"] not in filesystems.MEMBER_TYPES:
            fss.append({**_filesystem(ctx, device, probe, image), "esp": esp})
    for d in disk_docs:
        for p in d["partition_table"]["partitions"] if d["partition_table"] else []:
            p["content"] = contents.get(p["node"])
    arrays: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    if not all(d["image"] for d in disk_docs):
        arrays, groups = _volumes_on(
            ctx, {d["path"] for d in disk_docs} | {p[0] for p in places},
            pv_seen="LVM2_member" in contents.values(),
        )  # fmt: skip
    stacked = [a["device"] for a in arrays] + [
        f"/dev/{g['name']}/{lv['name']}"
        for g in groups
        for lv in g["lvs"]
        if not (lv["hidden"] or lv["refused"])
    ]
    for device in stacked:
        probe = _probe(ctx, _blkid_argv(device, None))
        if probe.get("TYPE") and probe["TYPE"] not in filesystems.MEMBER_TYPES:
            fss.append({**_filesystem(ctx, device, probe, None), "esp": False})
    fstab = None
    if ctx.paths.source_root is not None:
        fstab_text = _read_text(ctx.paths.source_root / "etc" / "fstab")
        fstab = filesystems.parse_fstab(fstab_text) if fstab_text is not None else None
    _attach_fstab(fss, fstab or [])
    return new_layout(
        disks=disk_docs,
        md_arrays=arrays,
        volume_groups=groups,
        filesystems=fss,
        fstab=fstab,
        bootloader=_bootloader(ctx, disk_docs, fss),
        refused=[
            {"kind": "signature", "name": device, "reason": _REFUSED_SIGNATURES[kind]}
            for device, kind in contents.items()
            if kind in _REFUSED_SIGNATURES
        ]
        + volumes.refused_volumes(groups),
    )
