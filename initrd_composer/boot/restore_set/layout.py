"""layout.json, the restore set's description of the saved machine's storage: its format
name and version, its text (sorted keys, stable bytes) and the shape check a restore runs
before it plans anything, so a layout it does not understand is refused before any write.

Boot side: the capture writes the document through these functions and the restore reads it
through them, so both agree on one definition.
"""

from __future__ import annotations

import json
from typing import Any

from initrd_composer.boot.restore_set import RestoreSetError

LAYOUT_FORMAT = "initrd-composer-layout"
LAYOUT_VERSION = 1
LAYOUT_NAME = "layout.json"


class LayoutError(RestoreSetError):
    """A tool's output or a layout document that does not have the expected shape."""


# Top-level key -> the JSON type it must have (None allowed where the value may be absent).
_TOP: dict[str, tuple[type, bool]] = {
    "disks": (list, False),
    "md_arrays": (list, False),
    "lvm": (dict, False),
    "filesystems": (list, False),
    "fstab": (list, True),
    "bootloader": (dict, False),
    "refused": (list, False),
}
_DISK_KEYS = ("name", "path", "size_bytes", "logical_sector_size", "partition_table", "boot_sector", "gap")
_FS_KEYS = ("device", "type", "uuid", "label", "mountpoint", "features", "fstab")
_LV_KEYS = ("name", "uuid", "size_bytes", "segtypes", "refused")


def dump_layout(doc: dict[str, Any]) -> str:
    """layout.json's text: sorted keys and a final newline, the same bytes for the same layout."""
    validate_layout(doc)
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def load_layout(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LayoutError(f"layout.json is not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(doc, dict):
        raise LayoutError("layout.json is not a JSON object")
    validate_layout(doc)
    return doc


def _need(items: Any, keys: tuple[str, ...], where: str) -> None:
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise LayoutError(f"layout: {where}[{i}] is not an object")
        missing = [k for k in keys if k not in item]
        if missing:
            raise LayoutError(f"layout: {where}[{i}] lacks {', '.join(missing)}")


def validate_layout(doc: dict[str, Any]) -> None:
    """Raise LayoutError unless doc is a layout of this format and version with the keys a
    restore reads."""
    if doc.get("format") != LAYOUT_FORMAT:
        raise LayoutError(
            f"not a layout document: format {doc.get('format')!r}", f"expected {LAYOUT_FORMAT!r}"
        )
    if doc.get("version") != LAYOUT_VERSION:
        raise LayoutError(
            f"layout version {doc.get('version')!r} is not supported",
            f"this initrd-composer reads version {LAYOUT_VERSION}; use the release that wrote it",
        )
    for key, (kind, optional) in _TOP.items():
        value = doc.get(key)
        if not (isinstance(value, kind) or (optional and value is None)):
            raise LayoutError(f"layout: {key} must be a {kind.__name__}" + (" or null" if optional else ""))
    _need(doc["disks"], _DISK_KEYS, "disks")
    _need(doc["filesystems"], _FS_KEYS, "filesystems")
    groups = doc["lvm"].get("volume_groups")
    if not isinstance(groups, list):
        raise LayoutError("layout: lvm.volume_groups must be a list")
    _need(groups, ("name", "uuid", "extent_size_bytes", "pvs", "lvs"), "lvm.volume_groups")
    for g in groups:
        _need(g["lvs"], _LV_KEYS, f"lvm.volume_groups[{g['name']}].lvs")
        flagged = {f"{g['name']}/{lv['name']}" for lv in g["lvs"] if lv["refused"]}
        listed = {r.get("name") for r in doc["refused"] if isinstance(r, dict)}
        if not flagged <= listed:
            raise LayoutError(f"layout: refused LVs not in refused: {', '.join(sorted(flagged - listed))}")
