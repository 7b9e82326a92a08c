"""A volume group's LVM2 text metadata (what `vgcfgbackup` writes) read into a tree, laid out
again for the new PVs and written back, for `pvcreate --restorefile` and `vgcfgrestore`
(pure; the argv builders at the end say how the restore runs them).

The syntax (LVM's config format): `key = value` with integers, "strings" (`\\"` and `\\\\`
escaped), lists `[...]` of those, `name { ... }` sections, `#` comments. Comments are not
kept; the tree is plain dicts in file order, so what is not touched comes back as it was.

The new layout: each PV's `dev_size` and `pe_count` from its new device size (its `pe_start`
stays); every LV gets the plan's extents, striped LVs first (each stripe on its own PV, the
PVs with most room first, the count rounded down to whole stripes), then linear ones filling
the PVs in order, a segment per PV stretch. Ids, names, flags, tags and the extent size stay;
`seqno` restarts at 1 (the VG is new to these disks).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeAlias

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.sizing import LvPlan, VgPlan

Scalar: TypeAlias = int | str
Value: TypeAlias = "Scalar | list[Scalar] | Section"
Section: TypeAlias = "dict[str, Value]"

SECTOR = 512  # LVM metadata counts sizes in 512-byte sectors whatever the disk's own
_HINT = "restore this volume group by hand from the expert shell (vgcfgrestore)"
_TOKEN = re.compile(r'\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|([{}\[\]=,])|([^\s#={}\[\],"]+)', re.DOTALL)
_INT = re.compile(r"-?\d+")
_SEGMENT = re.compile(r"segment\d+")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, line): kind "str", "punct" or "word"."""
    out = []
    at = 0
    while at < len(text):
        m = _TOKEN.match(text, at)
        line = text.count("\n", 0, at) + 1
        if m is None:  # an unterminated string
            raise RestoreRefused(f"LVM metadata, line {line}: cannot read {text[at : at + 20]!r}", _HINT)
        if m.group(1) is not None:
            out.append(("str", re.sub(r"\\(.)", r"\1", m.group(1), flags=re.DOTALL), line))
        elif m.group(2) is not None:
            out.append(("punct", m.group(2), line))
        elif m.group(3) is not None:
            out.append(("word", m.group(3), line))
        at = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0

    def fail(self, what: str) -> RestoreRefused:
        line = self.tokens[min(self.at, len(self.tokens) - 1)][2] if self.tokens else 1
        return RestoreRefused(f"LVM metadata, line {line}: {what}", _HINT)

    def next(self) -> tuple[str, str]:
        if self.at >= len(self.tokens):
            raise self.fail("unexpected end")
        kind, text, _line = self.tokens[self.at]
        self.at += 1
        return kind, text

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at][:2] if self.at < len(self.tokens) else None

    def section(self, closed: bool) -> Section:
        items: Section = {}
        while True:
            token = self.peek()
            if token is None:
                if closed:
                    raise self.fail("a section is not closed")
                return items
            if token == ("punct", "}") and closed:
                self.at += 1
                return items
            kind, name = self.next()
            if kind != "word" or name in items:
                raise self.fail(f"expected a new key or section name, got {name!r}")
            kind, op = self.next()
            if (kind, op) == ("punct", "{"):
                items[name] = self.section(closed=True)
            elif (kind, op) == ("punct", "="):
                items[name] = self.value()
            else:
                raise self.fail(f"expected = or {{ after {name!r}")

    def scalar(self, kind: str, text: str) -> Scalar:
        if kind == "str":
            return text
        if kind == "word" and _INT.fullmatch(text):
            return int(text)
        raise self.fail(f"expected a number or a string, got {text!r}")

    def value(self) -> Value:
        kind, text = self.next()
        if (kind, text) != ("punct", "["):
            return self.scalar(kind, text)
        items: list[Scalar] = []
        while True:
            kind, text = self.next()
            if (kind, text) == ("punct", "]"):
                return items
            items.append(self.scalar(kind, text))
            kind, text = self.next()
            if (kind, text) == ("punct", "]"):
                return items
            if (kind, text) != ("punct", ","):
                raise self.fail(f"expected , or ] in a list, got {text!r}")


def parse_metadata(text: str) -> Section:
    """The metadata as nested dicts (sections), ints, strings and lists of those."""
    return _Parser(text).section(closed=False)


def _scalar_text(value: Scalar) -> str:
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dump(section: Section, depth: int, out: list[str]) -> None:
    pad = "\t" * depth
    for key, value in section.items():
        if isinstance(value, dict):
            out += ["", f"{pad}{key} {{"]
            _dump(value, depth + 1, out)
            out.append(f"{pad}}}")
        elif isinstance(value, list):
            out.append(f"{pad}{key} = [{', '.join(_scalar_text(v) for v in value)}]")
        else:
            out.append(f"{pad}{key} = {_scalar_text(value)}")


def dump_metadata(tree: Section) -> str:
    """The tree in LVM's syntax (tab-indented, a blank line before each section)."""
    out = ["# LVM2 text metadata, laid out again by initrd-composer's restore"]
    _dump(tree, 0, out)
    return "\n".join(out) + "\n"


def _sub(section: Section, key: str, where: str) -> Section:
    value = section.get(key)
    if not isinstance(value, dict):
        raise RestoreRefused(f"LVM metadata of {where}: no {key} section", _HINT)
    return value


def _int(section: Section, key: str, where: str) -> int:
    value = section.get(key)
    if not isinstance(value, int):
        raise RestoreRefused(f"LVM metadata of {where}: {key} is not a number", _HINT)
    return value


def _vg_section(tree: Section, name: str) -> Section:
    sections = {k: v for k, v in tree.items() if isinstance(v, dict)}
    if list(sections) != [name]:
        raise RestoreRefused(f"the saved LVM metadata describes {', '.join(sections) or 'no volume group'}, "
                             f"not volume group {name}", _HINT)  # fmt: skip
    return sections[name]


def _stripes_of(vg: str, name: str, lv: Section) -> tuple[int, int | None]:
    """(stripe count, stripe size) shared by all of an LV's segments; linear is 1 stripe."""
    shapes = set()
    for key, seg in lv.items():
        if not (_SEGMENT.fullmatch(key) and isinstance(seg, dict)):
            continue
        kind = seg.get("type")
        if kind != "striped":
            raise RestoreRefused(f"logical volume {vg}/{name} has segment type {kind}, which the restore "
                                 "cannot lay out again (only linear and striped)", _HINT)  # fmt: skip
        count = _int(seg, "stripe_count", f"{vg}/{name}")
        size = seg.get("stripe_size") if count > 1 else None
        shapes.add((count, size if isinstance(size, int) else None))
    if len(shapes) != 1:
        raise RestoreRefused(f"logical volume {vg}/{name} has segments of {len(shapes) or 'no'} different "
                             "stripe layouts; the restore lays out only one", _HINT)  # fmt: skip
    return shapes.pop()


class _Extents:
    """Each PV's next free extent and its extent count; PVs in metadata order."""

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.count = dict(counts)
        self.next = dict.fromkeys(counts, 0)

    def free(self, pv: str) -> int:
        return self.count[pv] - self.next[pv]

    def take(self, pv: str, n: int) -> int:
        start = self.next[pv]
        self.next[pv] += n
        return start


def _segment(start: int, count: int, stripes: list[Scalar], stripe_size: int | None) -> Section:
    seg: Section = {"start_extent": start, "extent_count": count, "type": "striped",
                    "stripe_count": len(stripes) // 2}  # fmt: skip
    if stripe_size is not None:
        seg["stripe_size"] = stripe_size
    seg["stripes"] = stripes
    return seg


def _lay_striped(where: str, lv: LvPlan, n: int, size: int | None, pvs: _Extents) -> list[Section]:
    per = lv.new_extents // n
    roomiest = sorted(pvs.count, key=lambda pv: -pvs.free(pv))[:n]
    if per == 0 or len(roomiest) < n or any(pvs.free(pv) < per for pv in roomiest):
        room = ", ".join(f"{pv} {pvs.free(pv)}" for pv in pvs.count)
        raise RestoreRefused(
            f"logical volume {where} needs {n} stripes of {max(per, 1)} extents, each on its own PV; "
            f"the PVs' free extents: {room}",
            "use larger target disks",
        )
    chosen = [pv for pv in pvs.count if pv in roomiest]
    stripes: list[Scalar] = []
    for pv in chosen:
        stripes += [pv, pvs.take(pv, per)]
    return [_segment(0, per * n, stripes, size)]


def _lay_linear(where: str, lv: LvPlan, pvs: _Extents) -> list[Section]:
    left, at, segments = lv.new_extents, 0, []
    if left <= 0:
        raise RestoreRefused(f"logical volume {where} is planned with no extents", "use larger target disks")
    for pv in pvs.count:
        take = min(left, pvs.free(pv))
        if take > 0:
            segments.append(_segment(at, take, [pv, pvs.take(pv, take)], None))
            left, at = left - take, at + take
    if left > 0:
        raise RestoreRefused(f"logical volume {where} needs {lv.new_extents} extents; the PVs have "
                             f"{at} free", "use larger target disks")  # fmt: skip
    return segments


def _with_segments(lv: Section, segments: list[Section]) -> Section:
    out: Section = {k: v for k, v in lv.items() if not _SEGMENT.fullmatch(k)}
    out["segment_count"] = len(segments)  # where it was, or last when it was missing
    for i, seg in enumerate(segments, 1):
        out[f"segment{i}"] = seg
    return out


def _resize_pvs(vg_name: str, vg_sec: Section, pv_sizes: Mapping[str, int]) -> dict[str, int]:
    """Each PV's new dev_size and pe_count set; the extents the LVs may use, by PV key (none
    on a PV the saved machine had made unallocatable)."""
    extent = _int(vg_sec, "extent_size", vg_name)
    pvs = _sub(vg_sec, "physical_volumes", vg_name)
    counts: dict[str, int] = {}
    for key, pv in pvs.items():
        if not isinstance(pv, dict):
            continue
        uuid = str(pv.get("id"))
        if uuid not in pv_sizes:
            raise RestoreRefused(f"volume group {vg_name}'s PV {uuid} ({key}) has no new device", _HINT)
        sectors = pv_sizes[uuid] // SECTOR
        pe_count = max(0, (sectors - _int(pv, "pe_start", f"{vg_name}/{key}")) // extent)
        pv["dev_size"], pv["pe_count"] = sectors, pe_count
        status = pv.get("status")
        counts[key] = pe_count if isinstance(status, list) and "ALLOCATABLE" in status else 0
    known = {str(pv.get("id")) for pv in pvs.values() if isinstance(pv, dict)}
    if set(pv_sizes) - known:
        raise RestoreRefused(f"volume group {vg_name} has no PV {', '.join(sorted(set(pv_sizes) - known))}",
                             _HINT)  # fmt: skip
    return counts


def restore_metadata(text: str, vg: VgPlan, pv_sizes: Mapping[str, int]) -> str:
    """`text` (the saved vgcfgbackup) laid out for the plan: `pv_sizes` maps each PV's uuid to
    its new device's size in bytes. RestoreRefused when the PVs cannot hold the LVs."""
    tree = parse_metadata(text)
    vg_sec = _vg_section(tree, vg.name)
    if _int(vg_sec, "extent_size", vg.name) * SECTOR != vg.extent_bytes:
        raise RestoreRefused(f"volume group {vg.name}: the metadata's extent size is not the plan's "
                             f"{vg.extent_bytes} bytes", _HINT)  # fmt: skip
    pvs = _Extents(_resize_pvs(vg.name, vg_sec, pv_sizes))
    section = vg_sec.get("logical_volumes")
    lvs = {k: v for k, v in section.items() if isinstance(v, dict)} if isinstance(section, dict) else {}
    planned = {lv.name: lv for lv in vg.lvs}
    if set(planned) != set(lvs):
        odd = sorted(set(planned) ^ set(lvs))
        raise RestoreRefused(f"volume group {vg.name}: the plan and the saved metadata differ in "
                             f"logical volumes {', '.join(odd)}", _HINT)  # fmt: skip
    shapes = {name: _stripes_of(vg.name, name, lv) for name, lv in lvs.items()}
    # Striped volumes first: each needs room on several PVs, which linear ones would take.
    order = sorted(lvs, key=lambda name: shapes[name][0] == 1)
    laid = {}
    for name in order:
        count, size = shapes[name]
        where = f"{vg.name}/{name}"
        if count > 1:
            laid[name] = _lay_striped(where, planned[name], count, size, pvs)
        else:
            laid[name] = _lay_linear(where, planned[name], pvs)
    if isinstance(section, dict):
        for name, lv in lvs.items():
            section[name] = _with_segments(lv, laid[name])
    vg_sec["seqno"] = 1
    return dump_metadata(tree)


def pvcreate_argv(device: str, pv_uuid: str, backup_file: str, options: Sequence[str] = ()) -> list[str]:
    """Recreate a PV with its saved uuid and the layout (pe_start) of the rewritten backup;
    -ff -y so that a stale label on the new disk is overwritten without a question.
    `options`: LVM's common options (--devices, --config, --driverloaded) for the caller."""
    return ["lvm", "pvcreate", *options, "-ff", "-y", "--uuid", pv_uuid, "--restorefile", backup_file,
            device]  # fmt: skip


def vgcfgrestore_argv(vg_name: str, backup_file: str, options: Sequence[str] = ()) -> list[str]:
    """Write the VG's metadata from the rewritten backup onto its recreated PVs."""
    return ["lvm", "vgcfgrestore", *options, "-f", backup_file, vg_name]
