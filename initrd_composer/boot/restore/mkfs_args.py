"""The mkfs command that recreates a saved filesystem (pure): its layout.json `filesystems[]`
record's type, UUID, label and creation features (capture/layout/filesystems.py recorded them
from dumpe2fs and xfs_db), and the dry run the restore makes of it before the first write.

ext2/3/4: `-O none,<saved features>` makes exactly the saved feature set whatever the
rescue's mke2fs.conf would add (`none` clears the defaults first), with the saved block and
inode size, bytes per inode (so a filesystem of many small files keeps its inode density) and
reserved-block percentage. xfs: the saved -m/-i/-b/-s options, each only when recorded; a
v4 (crc=0) filesystem gets its v5 features as 0, which mkfs.xfs accepts. vfat, swap and
btrfs: FAT size, UUID (volume id) and label. Labels are single argv items, never split.

Block and sector sizes are raised to the target's logical sector when it is larger (a 4Kn
disk cannot hold 1 KiB ext blocks or 512-byte xfs sectors); everything else is as saved.
A capture with no features (an image file) leaves the defaults to mkfs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from initrd_composer.boot.restore import RestoreRefused

EXT_TYPES = frozenset({"ext2", "ext3", "ext4"})
# Flags dumpe2fs lists among the features that only say what state the filesystem is in
# (a journal to replay, orphans being processed): set by the kernel, never by mke2fs.
EXT_STATE_FEATURES = frozenset({"needs_recovery", "orphan_present"})
# Every feature name e2fsprogs 1.47 knows (lib/e2p/feature.c): a saved one outside this list
# is what an "Invalid filesystem option set" from mke2fs is about.
KNOWN_EXT_FEATURES = frozenset(
    "dir_prealloc imagic_inodes has_journal ext_attr resize_inode dir_index lazy_bg snapshot_bitmap "
    "sparse_super2 fast_commit stable_inodes orphan_file sparse_super large_file huge_file uninit_bg "
    "uninit_groups dir_nlink extra_isize quota bigalloc metadata_csum replica read-only project "
    "shared_blocks verity orphan_present compression filetype needs_recovery journal_dev extent extents "
    "meta_bg 64bit mmp flex_bg ea_inode dirdata metadata_csum_seed large_dir inline_data encrypt casefold "
    "fname_encoding".split()
)
# (record key, mkfs.xfs option, suboption); crc first, the others depend on it.
_XFS_FLAGS = (
    ("crc", "-m", "crc"), ("finobt", "-m", "finobt"), ("rmapbt", "-m", "rmapbt"),
    ("reflink", "-m", "reflink"), ("inobtcount", "-m", "inobtcount"), ("bigtime", "-m", "bigtime"),
    ("sparse_inodes", "-i", "sparse"), ("nrext64", "-i", "nrext64"),
)  # fmt: skip
_TOOLS = {"xfs": "mkfs.xfs", "vfat": "mkfs.vfat", "swap": "mkswap", "btrfs": "mkfs.btrfs"}
_PACKAGES = {"mke2fs": "e2fsprogs", "mkfs.xfs": "xfsprogs", "mkfs.vfat": "dosfstools", "mkswap": "util-linux",
             "mkfs.btrfs": "btrfs-progs"}  # fmt: skip
_MIN_INODE_RATIO, _MAX_INODE_RATIO = 1024, 1 << 26  # mke2fs -i bounds


def _where(fs: Mapping[str, Any]) -> str:
    mount = fs.get("mountpoint") or (fs.get("fstab") or {}).get("mountpoint") or ""
    return f"{fs.get('device')}" + (f" ({mount})" if mount else "")


def tool_of(fs: Mapping[str, Any]) -> str:
    """mke2fs, mkfs.xfs, mkfs.vfat, mkswap or mkfs.btrfs; RestoreRefused for other types."""
    kind = str(fs.get("type") or "")
    tool = "mke2fs" if kind in EXT_TYPES else _TOOLS.get(kind)
    if tool is None:
        raise RestoreRefused(f"{_where(fs)} holds a {kind or 'unknown'} filesystem, which the restore cannot "
                             "make (only ext2/3/4, xfs, vfat, swap and btrfs)",
                             "make it by hand from the shell after the restore")  # fmt: skip
    return tool


def _features(fs: Mapping[str, Any]) -> Mapping[str, Any]:
    features = fs.get("features")
    return features if isinstance(features, Mapping) else {}


def ext_features(fs: Mapping[str, Any]) -> list[str]:
    """The saved ext feature list that mke2fs can set (state flags left out)."""
    return [f for f in _features(fs).get("features") or [] if f not in EXT_STATE_FEATURES]


def _ext(fs: Mapping[str, Any], device: str, sector: int) -> list[str]:
    f = _features(fs)
    argv = ["mke2fs", "-F", "-t", str(fs["type"])]
    if f.get("features") is not None:
        argv += ["-O", ",".join(["none", *ext_features(fs)])]
    block = max(int(f["block_size"]), sector) if f.get("block_size") else None
    if block:
        argv += ["-b", str(block)]
    if f.get("inode_size"):
        argv += ["-I", str(f["inode_size"])]
    if f.get("inode_ratio"):
        ratio = min(max(int(f["inode_ratio"]), block or 0, _MIN_INODE_RATIO), _MAX_INODE_RATIO)
        argv += ["-i", str(ratio)]
    if f.get("block_count") and f.get("reserved_blocks") is not None:
        percent = int(f["reserved_blocks"]) * 100 / int(f["block_count"])
        argv += ["-m", f"{round(percent, 3):g}"]
    if fs.get("uuid"):
        argv += ["-U", str(fs["uuid"])]
    # dumpe2fs prints the label as it is; blkid's export mangles bytes outside ASCII (M-).
    label = f.get("label") if f.get("label") is not None else fs.get("label")
    if label:
        argv += ["-L", str(label)]
    return [*argv, device]


def _xfs(fs: Mapping[str, Any], device: str, sector: int) -> list[str]:
    f = _features(fs)
    subs: dict[str, list[str]] = {"-m": [f"uuid={fs['uuid']}"] if fs.get("uuid") else [], "-i": []}
    if f.get("inode_size"):
        subs["-i"].append(f"size={f['inode_size']}")
    for key, option, name in _XFS_FLAGS:
        if f.get(key) is not None:
            subs[option].append(f"{name}={int(bool(f[key]))}")
    argv = ["mkfs.xfs", "-f"]
    for option, values in subs.items():
        if values:
            argv += [option, ",".join(values)]
    if f.get("block_size"):
        argv += ["-b", f"size={max(int(f['block_size']), sector)}"]
    if f.get("sector_size"):
        argv += ["-s", f"size={max(int(f['sector_size']), sector)}"]
    if fs.get("label"):
        argv += ["-L", str(fs["label"])]
    return [*argv, device]


def _vfat(fs: Mapping[str, Any], device: str) -> list[str]:
    argv = ["mkfs.vfat"]
    fat = str(_features(fs).get("fat_size") or fs.get("version") or "")
    if re.fullmatch(r"FAT(12|16|32)", fat):
        argv += ["-F", fat[3:]]
    if fs.get("uuid"):
        argv += ["-i", str(fs["uuid"]).replace("-", "")]
    if fs.get("label"):
        argv += ["-n", str(fs["label"])]
    return [*argv, device]


def _ids(fs: Mapping[str, Any]) -> list[str]:
    """-U UUID -L LABEL, each when saved (mkswap's and mkfs.btrfs's spelling)."""
    argv = ["-U", str(fs["uuid"])] if fs.get("uuid") else []
    return argv + (["-L", str(fs["label"])] if fs.get("label") else [])


def mkfs_argv(fs: Mapping[str, Any], device: str, *, sector: int = 512) -> list[str]:
    """The command that makes `fs` (a layout.json filesystems[] record) on `device`, whose
    logical sector is `sector` bytes."""
    tool = tool_of(fs)
    if tool == "mke2fs":
        return _ext(fs, device, sector)
    if tool == "mkfs.xfs":
        return _xfs(fs, device, sector)
    if tool == "mkfs.vfat":
        return _vfat(fs, device)
    if tool == "mkswap":
        return ["mkswap", *_ids(fs), device]
    return ["mkfs.btrfs", "-f", *_ids(fs), device]


def btrfs_subvolumes(fs: Mapping[str, Any]) -> list[str]:
    """The saved btrfs subvolumes' paths in creation order (a parent before its children);
    none when the capture could not list them (the filesystem was not mounted)."""
    subvolumes = _features(fs).get("subvolumes") or []
    return [str(s["path"]) for s in sorted(subvolumes, key=lambda s: int(s["id"]))]


def preflight_argv(fs: Mapping[str, Any], scratch_file: str, *, sector: int = 512) -> list[str]:
    """The same options tried without writing the target: `mke2fs -n` and `mkfs.xfs -N` read
    the scratch file's size and write nothing; mkfs.vfat, mkswap and mkfs.btrfs make the
    filesystem on it for real. `scratch_file` must exist, as a sparse file as large as the
    target device (FAT's cluster limits and mke2fs's and mkfs.xfs's geometry depend on it)."""
    argv = mkfs_argv(fs, scratch_file, sector=sector)
    dry = {"mke2fs": "-n", "mkfs.xfs": "-N"}.get(argv[0])
    return [argv[0], dry, *argv[1:]] if dry else argv


def _first_error(output: str) -> str:
    """The tool's first line that is neither its version banner nor its usage text."""
    for line in output.splitlines():
        text = line.strip()
        if text and not re.match(r"(mke2fs|mkfs\.\w+|btrfs-progs) v?\d|Usage:|/\*|See http", text):
            return text
    return "no message"


def _culprits(fs: Mapping[str, Any], tool: str, error: str) -> list[str]:
    """The saved features or options the error is about."""
    if tool == "mke2fs":
        saved = ext_features(fs)
        if error.startswith("Invalid filesystem option set"):
            # mke2fs echoes the whole list without saying which: the names e2fsprogs never had.
            return [f for f in saved if f not in KNOWN_EXT_FEATURES]
        quoted = re.findall(r"feature '([\w-]+)'", error)
        return quoted or [f for f in saved if re.search(rf"\b{re.escape(f)}\b", error)]
    if tool == "mkfs.xfs":
        m = re.match(r"unknown option -\w ([\w-]+)", error)
        if m:
            return [m.group(1)]
        names = {name for _key, _option, name in _XFS_FLAGS}
        return [n for n in sorted(names) if re.search(rf"\b{n}\b", error)]
    return []


def explain_preflight_failure(fs: Mapping[str, Any], output: str) -> RestoreRefused:
    """Why the dry run of `fs`'s mkfs failed, naming the saved feature the rescue's mkfs does
    not accept when its output tells (one line), and what to do."""
    tool = tool_of(fs)
    error = _first_error(output)
    named = _culprits(fs, tool, error)
    what = f"the rescue's {tool} cannot recreate {_where(fs)}'s {fs.get('type')} filesystem"
    detail = f"it does not accept {', '.join(named)} ({error})" if named else error
    return RestoreRefused(
        f"{what}: {detail}",
        f"nothing was written; use a rescue image with a {_PACKAGES[tool]} that has it, or restore by hand",
    )
