"""The storage stage: assemble the md RAID arrays and activate the LVM volume groups on the
machine's disks, then report them as the kernel and the tools see them (hwreport `storage`).

Runs right after probing, on every boot: a restore needs the source machine's arrays and
volumes, and an expert looking at a broken machine wants them too. The image's
/etc/mdadm/mdadm.conf makes mdadm assemble foreign arrays under their own names; its
/etc/lvm/lvm.conf makes LVM work without udev (skeleton/rootfs/etc). A failure is
reported and the rest goes on; nothing waits without a bound.

mdadm runs on every boot: the whole stage takes 0.15-0.25 s under TCG when the disks hold
nothing, and mdadm knows more superblock formats (0.90, 1.x, DDF, IMSM) than are worth
re-reading here. Each LVM run costs 0.4-0.5 s under TCG, so LVM is skipped when no block
device carries an LVM label, which LVM itself only looks for in a device's first four
sectors. With a RAID1 and two VGs the stage takes 2-3 s under TCG.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from initrd_composer.boot.commands import CommandResult, run_command
from initrd_composer.boot.storage.parse import (
    LVM_HEADER_BYTES,
    LVM_LABEL_SECTORS,
    MdDetail,
    MdstatArray,
    MdSysfs,
    StorageParseError,
    VolumeGroup,
    has_lvm_label,
    md_state,
    mdadm_uuid,
    member_path,
    parse_detail_export,
    parse_fullreport,
    parse_mdstat,
    read_md_sysfs,
)

ASSEMBLE_ARGV = ("mdadm", "--assemble", "--scan")
ACTIVATE_ARGV = ("lvm", "vgchange", "-ay", "--sysinit")  # --sysinit: no lvmpolld, dmeventd, locking
MKNODES_ARGV = ("lvm", "vgscan", "--mknodes")  # the /dev nodes of active LVs
FULLREPORT_ARGV = (
    "lvm", "fullreport", "--reportformat", "json", "--units", "b", "--nosuffix",
    "--configreport", "vg", "-o", "vg_name,vg_uuid,vg_missing_pv_count",
    "--configreport", "pv", "-o", "pv_name,pv_uuid,pv_missing",
    "--configreport", "lv", "-o", "lv_name,lv_path,lv_size,lv_active,lv_attr,lv_uuid",
    "--configreport", "pvseg", "-o", "pvseg_start",
    "--configreport", "seg", "-o", "segtype",
)  # fmt: skip
# mdadm's exit status 1 with nothing to assemble: no superblock anywhere, or no block device
NOTHING_TO_ASSEMBLE = ("No arrays found", "No devices listed in conf file were found")
# Not read for LVM labels: a floppy drive without a disk takes seconds to fail, a CD-ROM
# spins up, and LVM ignores both.
UNSCANNED_PREFIXES = ("fd", "sr")


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], *, timeout_s: float = ...) -> CommandResult: ...


@dataclass(frozen=True)
class StorageOptions:
    sys_root: str = "/sys"
    proc_root: str = "/proc"
    dev_root: str = "/dev"
    assemble_timeout_s: float = 60.0  # reads every superblock of every disk
    activate_timeout_s: float = 60.0
    query_timeout_s: float = 20.0
    label_scan_timeout_s: float = 10.0
    run: Runner = run_command
    clock: Callable[[], float] = time.monotonic


def _failure(result: CommandResult, skip: str) -> str:
    """A failed command and what it said, without its lines of success (`skip`): mdadm and
    vgchange report each array or VG, and the last line is often one that worked."""
    lines = [ln.strip() for ln in result.output.splitlines() if ln.strip() and skip not in ln]
    return f"{' '.join(result.argv)}: {'; '.join(lines[:4]) or f'exit status {result.returncode}'}"


def assemble_arrays(opts: StorageOptions, errors: list[str]) -> None:
    """`mdadm --assemble --scan`: every array whose members are present, degraded ones too."""
    result = opts.run(ASSEMBLE_ARGV, timeout_s=opts.assemble_timeout_s)
    if result.ok or (result.returncode == 1 and any(m in result.output for m in NOTHING_TO_ASSEMBLE)):
        return
    errors.append(_failure(result, "has been started"))


def _is_container(level: str, metadata: str) -> bool:
    """IMSM/DDF containers are inactive by nature; their sub-arrays are the volumes."""
    container_metadata = metadata.startswith("external:") and not metadata.startswith("external:/")
    return level == "container" or container_metadata


def md_entry(mdstat: MdstatArray, sysfs: MdSysfs, detail: MdDetail | None, dev_root: str) -> dict[str, Any]:
    """One array of the report: the kernel's sysfs view, with the name and UUID as mdadm
    reads them from the superblock."""
    values = detail.values if detail else {}
    if sysfs.members:
        members = [n for n, slot, state in sysfs.members if slot.isdigit() and "faulty" not in state]
        spares = [n for n, slot, state in sysfs.members if not slot.isdigit() and "faulty" not in state]
        faulty = [n for n, _, state in sysfs.members if "faulty" in state]
    else:  # no sysfs directory: what /proc/mdstat says
        members = [n for n, _, flags in mdstat.members if not set(flags) & {"S", "F"}]
        spares = [n for n, _, flags in mdstat.members if "S" in flags]
        faulty = [n for n, _, flags in mdstat.members if "F" in flags]
    devname = values.get("MD_DEVNAME")
    link = os.path.join("/dev/md", devname) if devname else None
    if link and not os.path.lexists(os.path.join(dev_root, "md", str(devname))):
        link = None
    state = md_state(sysfs) if sysfs.array_state else ("active" if mdstat.active else "inactive")
    return {
        "device": f"/dev/{mdstat.name}",
        "devname": link,
        "name": values.get("MD_NAME"),
        "level": sysfs.level or values.get("MD_LEVEL") or mdstat.level,
        "uuid": values.get("MD_UUID") or (mdadm_uuid(sysfs.uuid) if sysfs.uuid else None),
        "metadata": values.get("MD_METADATA") or sysfs.metadata_version or None,
        "raid_disks": sysfs.raid_disks,
        "members": [member_path(n) for n in members],
        "spares": [member_path(n) for n in spares],
        "faulty": [member_path(n) for n in faulty],
        "state": state,
        "degraded": bool(sysfs.degraded),
    }


def md_arrays(opts: StorageOptions, errors: list[str]) -> list[dict[str, Any]]:
    """The arrays the kernel has now (/proc/mdstat), each read from sysfs and mdadm."""
    try:
        with open(os.path.join(opts.proc_root, "mdstat")) as f:
            listed = parse_mdstat(f.read())
    except OSError:
        return []  # md_mod is not loaded: mdadm found no array
    except StorageParseError as exc:
        errors.append(str(exc))
        return []
    arrays = []
    for array in listed:
        sysfs = read_md_sysfs(os.path.join(opts.sys_root, "block", array.name, "md"))
        argv = ("mdadm", "--detail", "--export", f"/dev/{array.name}")
        result = opts.run(argv, timeout_s=opts.query_timeout_s)
        detail = parse_detail_export(result.output) if result.ok else None
        entry = md_entry(array, sysfs, detail, opts.dev_root)
        if not array.active and not _is_container(entry["level"] or "", sysfs.metadata_version):
            have = len(entry["members"]) + len(entry["spares"])
            wanted = entry["raid_disks"] or "?"
            errors.append(f"{entry['device']} is inactive with {have} of {wanted} members;"
                          f" `mdadm --run {entry['device']}` starts it as it is")
        elif not result.ok and array.active:
            errors.append(result.describe())
        arrays.append(entry)
    return arrays


def _block_candidates(sys_root: str) -> list[str]:
    """Kernel names of the block devices (partitions and md arrays included) big enough to
    hold an LVM label, floppies and CD-ROMs left out."""
    base = os.path.join(sys_root, "class", "block")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith(UNSCANNED_PREFIXES):
            continue
        try:
            with open(os.path.join(base, name, "size")) as f:
                sectors = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if sectors >= LVM_LABEL_SECTORS:
            out.append(name)
    return out


def _read_header(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, LVM_HEADER_BYTES, 0)
    finally:
        os.close(fd)


def lvm_labelled(opts: StorageOptions) -> list[str] | None:
    """The block devices with an LVM label, or None when the scan did not finish in time
    (a disk that hangs on a read): then LVM runs anyway, under its own timeouts. The reads
    run in a daemon thread so that a stuck one cannot hold PID 1."""
    found: list[str] = []
    done = threading.Event()

    def scan() -> None:
        for name in _block_candidates(opts.sys_root):
            path = member_path(name).replace("/dev", opts.dev_root, 1)
            try:
                if has_lvm_label(_read_header(path)):
                    found.append(member_path(name))
            except OSError:
                continue  # no medium, gone, unreadable: LVM could not read it either
        done.set()

    threading.Thread(target=scan, name="lvm-label-scan", daemon=True).start()
    return list(found) if done.wait(opts.label_scan_timeout_s) else None


def _ensure_device_mapper(opts: StorageOptions, errors: list[str]) -> None:
    """dm_mod makes /dev/mapper/control; LVM would also get it loaded through the kernel's
    request_module, but a failure here names the module instead of a vague LVM message."""
    if os.path.exists(os.path.join(opts.sys_root, "module", "dm_mod")):
        return
    result = opts.run(("modprobe", "dm_mod"), timeout_s=opts.query_timeout_s)
    if not result.ok:
        errors.append(f"cannot load dm_mod (device-mapper): {result.describe()}")


def _vg_entry(vg: VolumeGroup) -> dict[str, Any]:
    return {
        "vg": vg.name,
        "uuid": vg.uuid,
        "pvs": list(vg.pvs),
        "missing_pvs": vg.missing_pvs,
        "lvs": [{"name": lv.name, "path": lv.path, "size_bytes": lv.size_bytes, "active": lv.active}
                for lv in vg.lvs],
    }


def _missing_nodes(groups: Sequence[VolumeGroup], dev_root: str) -> list[str]:
    return [lv.path for vg in groups for lv in vg.lvs
            if lv.active and lv.path and not os.path.exists(lv.path.replace("/dev", dev_root, 1))]


def activate_volume_groups(opts: StorageOptions, errors: list[str]) -> list[dict[str, Any]]:
    """vgchange -ay, then one fullreport. With no udev, vgchange makes the /dev nodes itself
    (lvm.conf: udev_rules = 0); `vgscan --mknodes` (0.4 s under TCG) runs only when an
    active LV's node is missing all the same. An LV left inactive is reported, not an
    error: it may be set to skip activation (thin snapshots are), and vgchange's exit
    status tells a failed activation."""
    _ensure_device_mapper(opts, errors)
    result = opts.run(ACTIVATE_ARGV, timeout_s=opts.activate_timeout_s)
    if not result.ok:
        errors.append(_failure(result, "now active"))
    result = opts.run(FULLREPORT_ARGV, timeout_s=opts.query_timeout_s)
    if not result.ok:
        errors.append(result.describe())
        return []
    try:
        groups = parse_fullreport(result.output)
    except StorageParseError as exc:
        errors.append(f"lvm fullreport: {exc}")
        return []
    if _missing_nodes(groups, opts.dev_root):
        result = opts.run(MKNODES_ARGV, timeout_s=opts.query_timeout_s)
        if not result.ok:
            errors.append(_failure(result, "Found volume group"))
    missing = _missing_nodes(groups, opts.dev_root)
    errors.extend(f"{path} is active but has no device node" for path in missing)
    errors.extend(f"volume group {vg.name} misses {vg.missing_pvs} physical volume(s)"
                  for vg in groups if vg.missing_pvs)
    return [_vg_entry(vg) for vg in groups]


def run_storage(opts: StorageOptions | None = None) -> dict[str, Any]:
    """The `storage` section: ok (nothing failed), md arrays, LVM volume groups, errors,
    notes, seconds. Empty lists and ok when the disks hold neither."""
    opts = opts or StorageOptions()
    start = opts.clock()
    errors: list[str] = []
    notes: list[str] = []
    assemble_arrays(opts, errors)
    md = md_arrays(opts, errors)
    labelled = lvm_labelled(opts)
    if labelled == []:
        notes.append("no LVM label on any block device; LVM not run")
        lvm: list[dict[str, Any]] = []
    else:
        if labelled is None:
            notes.append(f"the LVM label scan took over {opts.label_scan_timeout_s:g} s; LVM run anyway")
        lvm = activate_volume_groups(opts, errors)
    return {
        "ok": not errors,
        "md": md,
        "lvm": lvm,
        "errors": errors,
        "notes": notes,
        "seconds": round(opts.clock() - start, 2),
    }


def storage_detail(section: dict[str, Any]) -> str:
    """The `stage: storage ok|failed DETAIL` text: arrays, then volume groups, then the
    first error: `md127 raid1 clean (2 members); vg0: 2 LVs active`."""
    parts = []
    for array in section.get("md", []):
        count = len(array.get("members", []))
        wanted = array.get("raid_disks")
        members = f"{count} of {wanted} members" if wanted and wanted != count else f"{count} members"
        name = os.path.basename(array["device"])
        parts.append(f"{name} {array.get('level') or '?'} {array['state']} ({members})")
    for vg in section.get("lvm", []):
        lvs = vg.get("lvs", [])
        active = sum(1 for lv in lvs if lv.get("active"))
        counted = f"{active} of {len(lvs)}" if active != len(lvs) else f"{active}"
        parts.append(f"{vg['vg']}: {counted} LV{'' if len(lvs) == 1 else 's'} active")
    if not parts:
        parts.append("no RAID or LVM on the disks")
    errors = section.get("errors", [])
    if errors:
        parts.append(errors[0] + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    return "; ".join(parts)
