"""What `compare` reports, from what it read: the verifier's mismatches sorted into changed,
missing and extra files under the machine's mount points, and the differences between the
saved layout and this machine's (disks, partitions, arrays, volume groups, filesystems).

Pure functions of their inputs; the stage (compare/stage.py) does the mounting and reading.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from initrd_composer.boot.restore_set.verify import Mismatch

_MISSING = "missing"
_EXTRA = "not in the manifest"
_GIB = 1 << 30


@dataclass
class FileDifferences:
    """Paths as the machine mounts them (`/boot/grub/grub.cfg`)."""

    changed: list[tuple[str, str]] = field(default_factory=list)  # (path, what differs)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def add(self, mount: str, mismatches: Iterable[Mismatch]) -> None:
        for m in mismatches:
            path = machine_path(mount, m.path)
            if m.what == _MISSING:
                self.missing.append(path)
            elif m.what == _EXTRA:
                self.extra.append(path)
            else:
                self.changed.append((path, m.what))

    def sort(self) -> None:
        self.changed.sort()
        self.missing.sort()
        self.extra.sort()

    def count(self) -> int:
        return len(self.changed) + len(self.missing) + len(self.extra)


def machine_path(mount: str, rel: str) -> str:
    """`/boot` + `grub/x` -> `/boot/grub/x`; `.` is the mount point itself."""
    return os.path.normpath(os.path.join("/", mount.lstrip("/"), rel))


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / _GIB:.1f} GiB" if n >= _GIB else f"{n / (1 << 20):.0f} MiB"


def pair_disks(
    saved: Sequence[Mapping[str, Any]], now: Sequence[Mapping[str, Any]]
) -> list[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    """Each saved disk with this machine's disk of the same WWN or serial, else the next
    unpaired one in order (None when there are fewer disks)."""
    free = list(now)
    paired: list[Mapping[str, Any] | None] = []
    for disk in saved:
        same = next((d for d in free if _same_identity(disk, d)), None)
        if same is not None:
            free.remove(same)
        paired.append(same)
    paired = [d if d is not None else (free.pop(0) if free else None) for d in paired]
    return list(zip(saved, paired, strict=True))


def _same_identity(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return any(a.get(key) and a.get(key) == b.get(key) for key in ("wwn", "serial"))


def _partitions(disk: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    table = disk.get("partition_table") or {}
    return {int(p["number"]): p for p in table.get("partitions") or []}


def _disk_lines(saved: Mapping[str, Any], now: Mapping[str, Any] | None) -> list[str]:
    name = saved.get("name")
    if now is None:
        return [f"disk {name} ({_size(saved.get('size_bytes'))}): no disk of this machine stands for it"]
    here = f"disk {name} -> {now.get('name')}"
    lines = []
    if saved.get("size_bytes") != now.get("size_bytes"):
        lines.append(f"{here}: size {_size(saved.get('size_bytes'))} -> {_size(now.get('size_bytes'))}")
    old_t, new_t = saved.get("partition_table") or {}, now.get("partition_table") or {}
    if old_t.get("label") != new_t.get("label"):
        lines.append(
            f"{here}: partition table {old_t.get('label') or 'none'} -> {new_t.get('label') or 'none'}"
        )
    old_p, new_p = _partitions(saved), _partitions(now)
    for number in sorted(old_p.keys() | new_p.keys()):
        a, b = old_p.get(number), new_p.get(number)
        if b is None:
            lines.append(f"{here}: partition {number} is missing")
            continue
        if a is None:
            lines.append(f"{here}: partition {number} is new")
            continue
        for key, what in (
            ("start", "start"),
            ("size", "size"),
            ("type", "type"),
            ("uuid", "GUID"),
            ("name", "name"),
        ):
            if a.get(key) != b.get(key):
                lines.append(f"{here}: partition {number} {what} {a.get(key)!r} -> {b.get(key)!r}")
    return lines


def _by(items: Iterable[Mapping[str, Any]], key: str) -> dict[Any, Mapping[str, Any]]:
    return {item[key]: item for item in items if item.get(key)}


def _array_lines(saved: Sequence[Mapping[str, Any]], now: Sequence[Mapping[str, Any]]) -> list[str]:
    here = _by(now, "uuid")
    lines = []
    for array in saved:
        other = here.get(array.get("uuid"))
        if other is None:
            lines.append(
                f"md array {array.get('name') or array.get('device')} (UUID {array.get('uuid')}) is missing"
            )
        elif other.get("level") != array.get("level"):
            lines.append(f"md array {array.get('name')}: level {array.get('level')} -> {other.get('level')}")
    return lines


def _vg_lines(saved: Sequence[Mapping[str, Any]], now: Sequence[Mapping[str, Any]]) -> list[str]:
    here = _by(now, "name")
    lines = []
    for vg in saved:
        other = here.get(vg.get("name"))
        if other is None:
            lines.append(f"volume group {vg.get('name')} is missing")
            continue
        if vg.get("uuid") != other.get("uuid"):
            lines.append(f"volume group {vg['name']}: UUID {vg.get('uuid')} -> {other.get('uuid')}")
        if vg.get("size_bytes") != other.get("size_bytes"):
            lines.append(
                f"volume group {vg['name']}: size {_size(vg.get('size_bytes'))} -> "
                f"{_size(other.get('size_bytes'))}"
            )
        lvs = _by(other.get("lvs") or [], "name")
        for lv in vg.get("lvs") or []:
            found = lvs.get(lv.get("name"))
            if found is None:
                lines.append(f"logical volume {vg['name']}/{lv.get('name')} is missing")
            elif found.get("size_bytes") != lv.get("size_bytes"):
                lines.append(
                    f"logical volume {vg['name']}/{lv['name']}: size {_size(lv.get('size_bytes'))} -> "
                    f"{_size(found.get('size_bytes'))}"
                )
    return lines


def _fs_name(fs: Mapping[str, Any]) -> str:
    where = fs.get("mountpoint") or (fs.get("fstab") or {}).get("mountpoint") or fs.get("device")
    return f"{where} ({fs.get('type')}, UUID {fs.get('uuid')})"


def _fs_lines(saved: Sequence[Mapping[str, Any]], now: Sequence[Mapping[str, Any]]) -> list[str]:
    here = _by(now, "uuid")
    lines = []
    for fs in saved:
        if not fs.get("uuid"):
            continue
        other = here.get(fs["uuid"])
        if other is None:
            lines.append(f"filesystem {_fs_name(fs)} is missing")
            continue
        for key in ("type", "label"):
            if (fs.get(key) or "") != (other.get(key) or ""):
                lines.append(f"filesystem {_fs_name(fs)}: {key} {fs.get(key)!r} -> {other.get(key)!r}")
        if fs.get("size_bytes") and other.get("size_bytes") and fs["size_bytes"] != other["size_bytes"]:
            lines.append(
                f"filesystem {_fs_name(fs)}: size {_size(fs['size_bytes'])} -> {_size(other['size_bytes'])}"
            )
    return lines


def layout_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """One line per difference between the saved layout and this machine's, in the order a
    reader checks them: disks and partitions, md arrays, volume groups, filesystems."""
    lines: list[str] = []
    pairs = pair_disks(saved.get("disks") or [], now.get("disks") or [])
    for disk, other in pairs:
        lines += _disk_lines(disk, other)
    lines += _array_lines(saved.get("md_arrays") or [], now.get("md_arrays") or [])
    saved_vgs = (saved.get("lvm") or {}).get("volume_groups") or []
    lines += _vg_lines(saved_vgs, (now.get("lvm") or {}).get("volume_groups") or [])
    lines += _fs_lines(saved.get("filesystems") or [], now.get("filesystems") or [])
    return lines


def report_lines(
    files: FileDifferences, layout: Sequence[str], unmatched: Sequence[str], limit: int | None = None
) -> list[str]:
    """The report: a summary with the counts, then the differences, at most `limit` of each
    kind (the rest counted in one line)."""
    head = (
        f"{len(files.changed)} changed, {len(files.missing)} missing, {len(files.extra)} extra files; "
        f"{len(layout)} layout differences"
    )
    lines = [head]
    kinds: list[tuple[str, list[str]]] = [
        ("not compared", list(unmatched)),
        ("changed", [f"{path} ({what})" for path, what in files.changed]),
        ("missing", list(files.missing)),
        ("extra", list(files.extra)),
        ("layout", list(layout)),
    ]
    for kind, items in kinds:
        shown = items if limit is None else items[:limit]
        lines += [f"{kind}: {item}" for item in shown]
        if len(items) > len(shown):
            lines.append(f"{kind}: ... and {len(items) - len(shown)} more")
    return lines
