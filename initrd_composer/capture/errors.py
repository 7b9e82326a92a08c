"""The capture's one error type. The capture also runs inside the rescue image (the `capture`
boot mode), so it cannot use the host side's ComposeError; the CLI turns it into one line."""

from __future__ import annotations


class CaptureError(Exception):
    """A capture that cannot go on: a one-line message and a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
