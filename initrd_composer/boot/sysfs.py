"""Reading sysfs attributes: a missing or unreadable file is an empty value, never an error,
because devices come and go while the boot looks at them."""

from __future__ import annotations


def read_attr(path: str) -> str:
    """The attribute's text without the trailing newline, or "" if it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
