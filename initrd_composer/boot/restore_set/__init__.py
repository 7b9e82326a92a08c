"""The restore set: what a capture writes and the rescue image restores from.

A restore set is one directory: one pax+zstd archive per captured filesystem and a manifest
(`manifest.json`) written last, which lists each archive's sha256 and every file it holds
(metadata, content sha256, xattr/ACL digest). The modules, one job each:

- `manifest`: the format (records, JSON read/write, validation, the "incomplete set" refusal);
- `extract`: extract one archive into a directory with libarchive, streaming;
- `verify`: compare a restored tree against the manifest's records.

Boot side: imports only the standard library, libarchive and itself.
"""

from __future__ import annotations


class RestoreSetError(Exception):
    """A restore set that cannot be used (missing manifest, bad format, corrupted archive,
    a restored tree that does not match): a one-line message and a hint for the console."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
