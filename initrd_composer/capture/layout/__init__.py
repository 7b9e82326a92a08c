"""A machine's storage layout (disks, md, LVM, filesystems, boot loader) as one JSON document,
the `layout.json` of a restore set: pure parsers of the tools' output, a collector that runs them.
The document's format and reader are the boot side's (initrd_composer.boot.restore_set.layout)."""

from __future__ import annotations

from initrd_composer.boot.restore_set.layout import LAYOUT_FORMAT, LAYOUT_VERSION, LayoutError

__all__ = ["LAYOUT_FORMAT", "LAYOUT_VERSION", "LayoutError"]
