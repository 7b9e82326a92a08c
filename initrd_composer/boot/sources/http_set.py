"""A restore set on an HTTP(S) server: `url=` names the set's directory (any static server
serving the directory `compose-initrd capture -o` wrote: nginx, Apache, `python3 -m http.server`).

The two JSON files are read whole (bounded: a wrong URL must not fill the RAM); each archive
is an `HttpStream`, read once into libarchive with Range resume after a dropped connection,
so no archive is ever held in RAM or staged on a disk. Whether a listed file is there is a
HEAD (or a one-byte GET) per file: a set whose archives are not all served is refused before
anything is written, as a set directory would be.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from urllib.parse import quote

from initrd_composer.boot.restore_set.manifest import MANIFEST_NAME
from initrd_composer.boot.sources import SourceError
from initrd_composer.boot.sources.http import HttpStream, probe, redact
from initrd_composer.boot.sources.http_wire import Log, quiet

SMALL_FILE_MAX = 256 << 20  # the manifest of a machine with millions of files stays below


def set_base(url: str, subdir: str | None = None) -> str:
    """The set directory's URL, ending in "/": `url` as given when it ends so, its directory
    when it names the manifest itself, `restore_set=NAME` below it when given."""
    base = url.split("#", 1)[0]
    if base.endswith("/" + MANIFEST_NAME):
        base = base[: -len(MANIFEST_NAME)]
    if not base.endswith("/"):
        base += "/"
    if subdir:
        base += quote(subdir.strip("/")) + "/"
    return base


def manifest_url(url: str, subdir: str | None = None) -> str:
    """What the media stage probes for a restore: the set's manifest (written last, so it
    answering means a complete capture is there)."""
    return set_base(url, subdir) + MANIFEST_NAME


@dataclass(frozen=True)
class SetUrl:
    """The set at `base` (with credentials, if the URL had them: never shown)."""

    base: str
    timeout_s: float = 30.0
    log: Log = quiet

    @property
    def shown(self) -> str:
        return redact(self.base)

    def _url(self, name: str) -> str:
        return self.base + quote(name)

    def _stream(self, name: str) -> HttpStream:
        return HttpStream(self._url(name), timeout_s=self.timeout_s, log=self.log)

    def read(self, name: str) -> bytes:
        chunks: list[bytes] = []
        total = 0
        try:
            with self._stream(name) as stream:
                while chunk := stream.read(1 << 20):
                    chunks.append(chunk)
                    total += len(chunk)
                    if total > SMALL_FILE_MAX:
                        too_big = f"{redact(self._url(name))} is over {SMALL_FILE_MAX >> 20} MiB"
                        raise OSError(errno.EFBIG, too_big)
        except SourceError as exc:
            if exc.reason == "not-found":
                raise FileNotFoundError(errno.ENOENT, exc.message) from exc
            raise OSError(errno.EIO, exc.message) from exc
        return b"".join(chunks)

    def missing(self, names: list[str]) -> list[str]:
        gone = []
        for name in names:
            try:
                probe(self._url(name), timeout_s=min(self.timeout_s, 10.0), log=self.log)
            except SourceError as exc:
                if exc.reason != "not-found":
                    raise OSError(errno.EIO, exc.message) from exc
                gone.append(name)
        return gone

    def open(self, name: str) -> HttpStream:
        return self._stream(name)

    def __str__(self) -> str:
        return self.shown
