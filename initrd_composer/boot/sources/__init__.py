"""The restore-data sources the media stage finds: HTTP(S) now (`sources.http`); NFS, CD-ROM/USB
(found by the marker the media builders write, never by a device name) and tape later.

Each source hands the restore stage a read-only byte stream and raises `SourceError` when it
cannot: a one-line message and a hint for the console, and a `reason` word for the `media`
report section, so a script can tell "server unreachable" from "not found" without parsing
English.
"""

from __future__ import annotations


class SourceError(Exception):
    """A restore-data source failed for good (after any retries).

    `reason` is one of: bad-url, unresolved, unreachable, not-found, forbidden, http-status,
    tls, redirects, range-ignored, changed, interrupted, protocol. `url` never carries a
    password; `status` is the HTTP status that decided it, if any.
    """

    def __init__(
        self, message: str, hint: str = "", *, reason: str = "error", url: str = "", status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.reason = reason
        self.url = url
        self.status = status
