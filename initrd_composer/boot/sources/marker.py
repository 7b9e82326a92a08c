"""The marker a rescue medium carries, `/.initrd-composer/medium.json`, and its check.

The ISO writer (initrd_composer/media/iso_image.py) writes it, the removable-media finder
reads it: both take the names from here. A JSON object, sorted keys:

    format         "initrd-composer-medium"
    version        1
    volume_id      the filesystem label of the medium (the ISO's -V, RESCUE by default)
    kernel         the kernel version the initrd on it is for
    initrd_sha256  of the initrd on it, as `compose-initrd iso` printed it
    data           "data" when the restore data is in /data on the medium, else null
"""

from __future__ import annotations

import json
import os
from typing import Any

MARKER_PATH = ".initrd-composer/medium.json"
MARKER_FORMAT = "initrd-composer-medium"
MARKER_VERSION = 1
MARKER_MAX_BYTES = 64 * 1024
DATA_DIR = "data"


def check_marker(root: str, fstype: str, label: str) -> tuple[dict[str, Any] | None, str]:
    """The marker under a mounted root, or None and why it is not ours."""
    where = f"/{MARKER_PATH}"
    try:
        with open(os.path.join(root, MARKER_PATH), "rb") as f:
            raw = f.read(MARKER_MAX_BYTES + 1)
    except FileNotFoundError:
        return None, f"no {where}"
    except OSError as exc:
        return None, f"cannot read {where}: {exc.strerror}"
    if len(raw) > MARKER_MAX_BYTES:
        return None, f"{where} is over {MARKER_MAX_BYTES} bytes"
    try:
        doc = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError too
        return None, f"{where} is not JSON ({exc})"
    if not isinstance(doc, dict):
        return None, f"{where} is not a JSON object"
    if doc.get("format") != MARKER_FORMAT:
        return None, f"{where} has format {doc.get('format')!r}, not {MARKER_FORMAT!r}"
    version = doc.get("version")
    if type(version) is not int or version != MARKER_VERSION:
        return None, f"{where} has version {version!r}; this image reads version {MARKER_VERSION}"
    volume_id = doc.get("volume_id")
    same = isinstance(volume_id, str) and (
        volume_id.upper() == label.upper() if fstype == "vfat" else volume_id == label  # FAT: no case
    )
    if not same:
        return None, f"{where} is for volume {volume_id!r} but this one is labelled {label!r}"
    data = doc.get("data")
    if data is not None and (not isinstance(data, str) or data in ("", ".", "..") or "/" in data):
        return None, f"{where} names a bad data directory {data!r}"
    if data is not None and not os.path.isdir(os.path.join(root, data)):
        return None, f"{where} names the data directory /{data}, which is missing"
    return doc, ""
