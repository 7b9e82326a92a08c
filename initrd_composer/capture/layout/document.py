"""The layout as one JSON document: built from the collector's records and checked with the
boot side's validator (initrd_composer.boot.restore_set.layout), which also writes and reads it."""

from __future__ import annotations

from typing import Any

from initrd_composer.boot.restore_set.layout import (
    LAYOUT_FORMAT,
    LAYOUT_VERSION,
    dump_layout,
    load_layout,
    validate_layout,
)

__all__ = ["dump_layout", "load_layout", "new_layout", "validate_layout"]


def new_layout(
    *,
    disks: list[dict[str, Any]],
    md_arrays: list[dict[str, Any]],
    volume_groups: list[dict[str, Any]],
    filesystems: list[dict[str, Any]],
    fstab: list[dict[str, Any]] | None,
    bootloader: dict[str, Any],
    refused: list[dict[str, str]],
) -> dict[str, Any]:
    doc = {
        "format": LAYOUT_FORMAT,
        "version": LAYOUT_VERSION,
        "disks": disks,
        "md_arrays": md_arrays,
        "lvm": {"volume_groups": volume_groups},
        "filesystems": filesystems,
        "fstab": fstab,
        "bootloader": bootloader,
        "refused": refused,
    }
    validate_layout(doc)
    return doc


