"""The restore-data sources the media stage finds, one module each:

- `sources.http`: HTTP(S), read as a stream with Range resume;
- `sources.nfs`: an NFS v4/v3 export (or `PREFIX-1.iso` on it, loop-mounted), mounted read-only;
- `sources.removable`: a CD-ROM/ISO or USB medium found by the marker the media builders write
  (label + `/.initrd-composer/medium.json`), never by a device name;
- `sources.tape_source`: a SCSI tape (st), OBDR drives taken out of CD-ROM emulation first.

Each offers `find(ctx, choice) -> Found` and raises `SourceError` when it cannot: a one-line
message and a hint for the console, and a `reason` word for the `media` report section, so a
script can tell "server unreachable" from "not found" without parsing English. A finder waits
for slow devices or servers only up to `ctx.timeout_s`; the stage decides about retrying.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MEDIA_ROOT = "/run/initrd-composer/media"  # mount points live below: nfs, iso, cdrom, usb


class SourceError(Exception):
    """A restore-data source failed (after the finder's own waiting).

    `reason` is a word for scripts. HTTP: bad-url, unresolved, unreachable, not-found, forbidden,
    http-status, tls, redirects, range-ignored, changed, interrupted, protocol. The others add:
    no-carrier, no-network, export-missing, mount-failed, no-medium, no-marker, wrong-tape,
    no-tape, tape-error, bad-spec. `url` never carries a password; `status` is the HTTP status
    that decided it, if any.
    """

    def __init__(
        self, message: str, hint: str = "", *, reason: str = "error", url: str = "",
        status: int | None = None, data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.reason = reason
        self.url = url
        self.status = status
        self.data = data or {}  # what the finder saw (refused candidates...), for the report


@dataclass(frozen=True)
class Choice:
    """One source the command line asks for: `kind` (tape, nfs, http, removable) and its
    `spec` as given (`server:/path`, a URL, `/dev/nst0`, or "" for "find it")."""

    kind: str
    spec: str = ""
    word: str = ""  # the kernel parameter that asked, for messages ("nfsmount=", "url=")


@dataclass(frozen=True)
class Found:
    """Where the restore data is, for the report's `media` section and the restore stage.

    kind: nfs | cdrom | usb | disk | http | tape; source: "10.0.2.2:/rescue", "/dev/sr0", a URL (no
    password), "/dev/nst0"; path: where the data is mounted, or how it is streamed
    ("https://... (stream)", "/dev/nst0 file 2"); data: what was found there (listing, sizes,
    digests); mounts: what the finder mounted, innermost first, so a retry can undo it.
    """

    kind: str
    source: str
    path: str
    data: dict[str, Any] = field(default_factory=dict)
    mounts: tuple[str, ...] = ()


Log = Callable[[str], None]


@dataclass(frozen=True)
class MediaContext:
    """What every finder gets: the command line, how long it may wait, where to mount, a log.
    Tests inject `sys_root`/`dev_root` and a fake `sleep`/`clock`."""

    cfg: Any  # initrd_composer.boot.cmdline.BootConfig (Any: no import cycle for the finders)
    timeout_s: float = 30.0
    media_root: str = MEDIA_ROOT
    sys_root: str = "/sys"
    dev_root: str = "/dev"
    log: Log = print
    sleep: Callable[[float], object] = time.sleep
    clock: Callable[[], float] = time.monotonic
    network: dict[str, Any] | None = None  # the network stage's report section, if it ran


def network_down(ctx: MediaContext) -> SourceError | None:
    """The network stage ran and configured nothing: say so instead of a timeout later."""
    net = ctx.network
    if net is not None and not net.get("interfaces"):
        why = "; ".join(net.get("errors") or net.get("problems") or []) or "no interface configured"
        return SourceError(f"the network is not up: {why}", "check the cable and the ip=/ipconf= words",
                           reason="no-network")  # fmt: skip
    return None
