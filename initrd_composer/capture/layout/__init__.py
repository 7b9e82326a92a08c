"""A machine's storage layout (disks, md, LVM, filesystems, boot loader) as one JSON document,
the `layout.json` of a restore set: pure parsers of the tools' output, a collector that runs them."""

from __future__ import annotations

from initrd_composer.errors import ComposeError

LAYOUT_FORMAT = "initrd-composer-layout"
LAYOUT_VERSION = 1


class LayoutError(ComposeError):
    """A tool's output or a layout document that does not have the expected shape."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint)
