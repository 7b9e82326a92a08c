"""`url=`: the restore data over HTTP(S). Finding it means the server answers for that URL;
the restore stage then reads it with `HttpStream` (Range resume), never staging it in RAM.
In the modes that read a restore set (nuke, compare) `url=` names the set's directory, and
the file asked for is its manifest (`restore_set=NAME` a directory below): it is written last,
so its answering means a complete capture is there. In `expert` the manifest is asked for
first too (the shell's `restore` steps read the set), then, when it is not there, the URL as
given (a shell user may want any file from the server).

In `probe` mode the stage reads the whole body once, as a restore would, and reports its
sha256, size and how many times the read resumed after a dropped connection: a check that
the data is reachable end to end before anyone relies on it.
"""

from __future__ import annotations

import hashlib

from initrd_composer.boot.sources import Choice, Found, MediaContext, SourceError, network_down
from initrd_composer.boot.sources.http import HttpStream, probe
from initrd_composer.boot.sources.http_set import manifest_url

READ_SIZE = 1 << 20
SET_MODES = ("nuke", "compare", "interactive")


def read_through(url: str, ctx: MediaContext) -> dict[str, object]:
    """Stream the body once; its sha256, bytes and resumes (a SourceError if it fails)."""
    digest = hashlib.sha256()
    with HttpStream(url, timeout_s=min(30.0, ctx.timeout_s), sleep=ctx.sleep, log=ctx.log) as stream:
        while chunk := stream.read(READ_SIZE):
            digest.update(chunk)
        stats = stream.stats()
    return {"sha256": digest.hexdigest(), "bytes": stats.bytes, "resumes": stats.resumes,
            "read_seconds": stats.seconds}  # fmt: skip


def find(ctx: MediaContext, choice: Choice) -> Found:
    down = network_down(ctx)
    if down is not None:
        raise down
    mode = getattr(ctx.cfg, "mode", None) or "expert"
    url = choice.spec
    timeout_s = min(10.0, ctx.timeout_s)
    if mode in (*SET_MODES, "expert"):
        url = manifest_url(url, getattr(ctx.cfg, "restore_set", None))
    try:
        answer = probe(url, timeout_s=timeout_s, retries=2, sleep=ctx.sleep, log=ctx.log)
    except SourceError:
        if mode != "expert" or url == choice.spec:
            raise
        answer = probe(choice.spec, timeout_s=timeout_s, retries=2, sleep=ctx.sleep, log=ctx.log)
    data: dict[str, object] = {
        "status": answer.status, "size": answer.size, "accept_ranges": answer.accept_ranges,
        "etag": answer.etag, "last_modified": answer.last_modified, "final_url": answer.final_url,
    }  # fmt: skip
    if mode == "probe":
        data.update(read_through(choice.spec, ctx))
    return Found("http", answer.url, f"{answer.final_url} (stream)", data)
