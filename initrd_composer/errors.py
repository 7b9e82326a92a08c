"""Typed errors of the host side; only cli.main() turns them into output."""

from __future__ import annotations


class ComposeError(Exception):
    """A failure the user can act on: a one-line message and a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(ComposeError):
    """Bad command-line usage (exit status 2)."""
