"""Read a virtual disk's filesystems on the host, without the project's code, to compare a
source machine with its restore: partitions from `sfdisk --json`, LVM volumes from LVM's own
reports over a read-only loop device of the PV (the host kernel has no device-mapper: each
linear LV segment becomes a loop device at its offset), mounted read-only without journal
replay (ext4 `noload`, xfs `norecovery,nouuid`: source and target share their UUIDs).

`rsync_differences()` is the independent comparison: `rsync -naiHAXc --delete` (content by
checksum, owners, modes, mtimes, hard links, ACLs, xattrs), each way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from initrd_composer.runner import run

LVM_CONF = "backup {\n backup = 0\n archive = 0\n}\n"
_EXT_TYPES = ("ext2", "ext3", "ext4")


def sparse_sha256(path: Path) -> str:
    """sha256 of a file's bytes, holes hashed as the zeros they read as but never read."""
    h = hashlib.sha256()
    size = path.stat().st_size
    zero = bytes(1 << 20)
    with open(path, "rb") as f:
        fd, pos = f.fileno(), 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data = size
            while pos < data:  # the hole, as zeros
                n = min(len(zero), data - pos)
                h.update(zero[:n])
                pos += n
            if pos >= size:
                break
            end = os.lseek(fd, pos, os.SEEK_HOLE)
            f.seek(pos)
            while pos < end:
                chunk = f.read(min(1 << 22, end - pos))
                h.update(chunk)
                pos += len(chunk)
    return h.hexdigest()


def _loop(image: Path, offset: int, size: int) -> str:
    return (
        run(["losetup", "-r", "-f", "--show", "-o", str(offset), "--sizelimit", str(size), image])
        .stdout.decode()
        .strip()
    )


def _blkid_type(device: str) -> str:
    out = run(["blkid", "-p", "-o", "value", "-s", "TYPE", device], check=False).stdout.decode().strip()
    return out


def _lvm(args: Sequence[str], device: str, conf_dir: Path) -> Any:
    env = {"LVM_SYSTEM_DIR": str(conf_dir), "LVM_SUPPRESS_FD_WARNINGS": "1"}
    out = run(
        ["lvm", *args, "--devices", device, "--reportformat", "json", "--units", "b", "--nosuffix"], env=env
    ).stdout.decode()
    return json.loads(out)


@contextlib.contextmanager
def mounted_trees(image: Path) -> Iterator[dict[str, Path]]:
    """Every filesystem of a disk image mounted read-only: {"part2": dir, "vg0/root": dir, ...}."""
    table = json.loads(run(["sfdisk", "--json", image]).stdout.decode())["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    loops: list[str] = []
    mounts: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="trees-") as tmp:
        base = Path(tmp)
        conf = base / "lvm"
        conf.mkdir()
        (conf / "lvm.conf").write_text(LVM_CONF)
        found: dict[str, tuple[str, str]] = {}  # name -> (device, type)
        try:
            for number, p in enumerate(table["partitions"], 1):
                start = int(p["start"]) * sector
                loop = _loop(image, start, int(p["size"]) * sector)
                loops.append(loop)
                kind = _blkid_type(loop)
                name = f"part{p['node'].rsplit(image.name, 1)[-1] or number}"
                if kind == "LVM2_member":
                    pe_start = int(
                        _lvm(["pvs", "-o", "pe_start"], loop, conf)["report"][0]["pv"][0]["pe_start"]
                    )
                    report = _lvm(
                        [
                            "lvs",
                            "-o",
                            "vg_name,lv_name,seg_start_pe,seg_size_pe,seg_pe_ranges,vg_extent_size",
                        ],
                        loop,
                        conf,
                    )
                    for lv in report["report"][0]["lv"]:
                        first = int(lv["seg_pe_ranges"].rsplit(":", 1)[1].split("-")[0])
                        if lv["seg_start_pe"] != "0":
                            raise AssertionError(f"{lv['lv_name']} has several segments; not handled here")
                        extent = int(lv["vg_extent_size"])
                        lv_loop = _loop(
                            image, start + pe_start + first * extent, int(lv["seg_size_pe"]) * extent
                        )
                        loops.append(lv_loop)
                        found[f"{lv['vg_name']}/{lv['lv_name']}"] = (lv_loop, _blkid_type(lv_loop))
                elif kind in (*_EXT_TYPES, "xfs", "vfat", "btrfs"):
                    found[name] = (loop, kind)
            trees: dict[str, Path] = {}
            for name, (device, kind) in sorted(found.items()):
                if kind not in (*_EXT_TYPES, "xfs", "vfat", "btrfs"):
                    continue
                where = base / name.replace("/", "-")
                where.mkdir()
                opts = (
                    "ro,noload" if kind in _EXT_TYPES else "ro,norecovery,nouuid" if kind == "xfs" else "ro"
                )
                run(["mount", "-t", kind, "-o", opts, device, where])
                mounts.append(where)
                trees[name] = where
            yield trees
        finally:
            for where in reversed(mounts):
                run(["umount", where], check=False)
            for loop in reversed(loops):
                run(["losetup", "-d", loop], check=False)


def rsync_differences(a: Path, b: Path, excludes: Sequence[str] = ()) -> list[str]:
    """What `rsync -naiHAXc --delete` would change to make b like a (empty: identical)."""
    argv = ["rsync", "-naiHAXc", "--delete", "--numeric-ids"]
    argv += [f"--exclude=/{e.lstrip('/')}" for e in excludes]
    out = run([*argv, f"{a}/", f"{b}/"]).stdout.decode(errors="replace")
    return [line for line in out.splitlines() if line.strip()]
