"""Disks and their partition tables from `sfdisk --json` and `lsblk --json -b -O`."""

from __future__ import annotations

import json
import re
from typing import Any

from initrd_composer.capture.layout import LayoutError

BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# An MBR partition of type 0xEF is the ESP too (UEFI spec 5.2.2).
ESP_MBR_TYPE = "ef"


def _load(text: str, tool: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{tool}: output is not JSON ({exc.msg}): {text.strip()[:200]!r}") from exc


def _partition_number(node: str) -> int | None:
    # sfdisk names nodes like the kernel would: sda1, nvme0n1p1, disk.img5.
    m = re.search(r"(\d+)$", node)
    return int(m.group(1)) if m else None


def parse_sfdisk_json(text: str) -> dict[str, Any]:
    """`sfdisk --json DEVICE`: the table's label (gpt or dos), id, sector size and partitions,
    each with start and size in sectors as sfdisk writes them back in a script."""
    doc = _load(text, "sfdisk --json")
    table = doc.get("partitiontable") if isinstance(doc, dict) else None
    if not isinstance(table, dict) or table.get("label") not in ("gpt", "dos"):
        raise LayoutError(
            f"sfdisk --json: no gpt or dos partition table: {text.strip()[:200]!r}",
            "only gpt and dos (MBR) tables are captured",
        )
    if table.get("unit", "sectors") != "sectors":
        raise LayoutError(f"sfdisk --json: unit {table.get('unit')!r}, expected sectors")
    label = str(table["label"])
    partitions = []
    for raw in table.get("partitions", []):
        ptype = str(raw.get("type", ""))
        upper = ptype.upper()
        partitions.append(
            {
                "node": str(raw.get("node", "")),
                "number": _partition_number(str(raw.get("node", ""))),
                "start": int(raw["start"]),
                "size": int(raw["size"]),
                "type": upper if label == "gpt" else ptype.lower(),
                "uuid": str(raw["uuid"]).upper() if raw.get("uuid") else None,
                "name": raw.get("name"),
                "attrs": raw.get("attrs"),
                "bootable": bool(raw.get("bootable", False)),
                "bios_boot": label == "gpt" and upper == BIOS_BOOT_GUID,
                "esp": upper == ESP_GUID if label == "gpt" else ptype.lower() == ESP_MBR_TYPE,
            }
        )
    return {
        "label": label,
        "id": table.get("id"),
        "sector_size": int(table.get("sectorsize", 512)),
        "first_lba": table.get("firstlba"),
        "last_lba": table.get("lastlba"),
        "partitions": partitions,
    }


def first_partition_start(table: dict[str, Any]) -> int | None:
    """The lowest start sector of any partition (None for an empty table)."""
    starts = [p["start"] for p in table["partitions"] if p["size"] > 0]
    return min(starts) if starts else None


def parse_lsblk_disk(text: str) -> dict[str, Any]:
    """The whole-disk row of `lsblk --json -b -O DEVICE`: size, sector sizes and identity.
    Partition rows are ignored (sfdisk is the source of truth for those), and so are
    pttype/fstype: lsblk takes them from udev, which a rescue system may not be running."""
    doc = _load(text, "lsblk --json")
    devices = doc.get("blockdevices") if isinstance(doc, dict) else None
    if not isinstance(devices, list) or not devices or not isinstance(devices[0], dict):
        raise LayoutError(f"lsblk --json: no block device: {text.strip()[:200]!r}")
    row = devices[0]

    def text_or_none(key: str) -> str | None:
        value = row.get(key)
        return str(value).strip() if value not in (None, "") else None

    return {
        "name": str(row.get("name", "")),
        "size_bytes": int(row["size"]),
        "logical_sector_size": int(row.get("log-sec") or 512),
        "physical_sector_size": int(row.get("phy-sec") or 512),
        "model": text_or_none("model"),
        "serial": text_or_none("serial"),
        "wwn": text_or_none("wwn"),
    }
