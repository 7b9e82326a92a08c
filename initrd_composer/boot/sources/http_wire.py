"""The wire side of `sources.http`: URLs, connections, and what a failed attempt means.

Kept apart from the stream so each file stays small; nothing here holds a body. Names without
an underscore are used by `sources.http` (and by tests that inject `connect`).
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import http.client
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from initrd_composer.boot.sources import SourceError

try:
    import ssl
except ImportError:  # an image built without _ssl (it brings libssl and libcrypto): http:// only
    ssl = None  # type: ignore[assignment]

USER_AGENT = "initrd-composer"
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Worth another try: the server, or a proxy in front of it, is busy or restarting.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# connect() errors that mean "no route to a listening server" rather than "it hung up".
UNREACHABLE_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,
     errno.EADDRNOTAVAIL}
)  # fmt: skip
HINTS = {
    "bad-url": "give url=http://HOST[:PORT]/PATH or https://...",
    "unresolved": "check the DNS server the network stage wrote to /etc/resolv.conf, or put the "
    "server's IP address in url=",
    "unreachable": "check that the server is up and that the network stage brought up a link "
    "with an address on the server's network (see the network report)",
    "not-found": "check the path in url=: the server has no such file",
    "forbidden": "the server refused access: check its permissions, or the user:password in url=",
    "http-status": "see the server's log for why it answered so",
    "tls": "the server's certificate could not be verified; give the CA that signed it (ca_file) "
    "or use http://. Verification is never turned off",
    "redirects": "give url= the address the server redirects to",
    "range-ignored": "the server does not honour Range requests, so a dropped connection cannot "
    "resume; serve the restore data with nginx, Apache or lighttpd (python -m http.server has no Range)",
    "changed": "the file changed on the server while it was read; start again once it is stable",
    "interrupted": "the connection kept failing mid-file; check the link (cable, switch) and the server",
    "protocol": "the server's answer breaks HTTP/1.1; try another server",
}


@dataclass(frozen=True)
class Target:
    """A parsed http(s) URL: where to connect, what to ask for, and how to show it."""

    url: str  # as given, credentials included (redirects are joined to it)
    scheme: str
    host: str
    port: int
    path: str  # path and query: what the request line carries
    authorization: str | None  # "Basic ..." from the URL's user:password
    shown: str  # the URL without its password, for messages and reports

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


@dataclass(frozen=True)
class Endpoint:
    """What `connect` is given: the connection to make (not yet opened)."""

    scheme: str
    host: str
    port: int
    timeout_s: float


Connect = Callable[[Endpoint], http.client.HTTPConnection]
Log = Callable[[str], None]


class Failure(Exception):
    """One failed attempt, judged: `transient` ones are worth another try."""

    def __init__(self, reason: str, text: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text
        self.transient = transient
        self.status = status


# -- URLs ------------------------------------------------------------------------------------
def redact(url: str) -> str:
    """The URL with the password of its userinfo replaced by *** (the user is kept)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>" if "@" in url else url
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def parse_url(url: str) -> Target:
    """An http:// or https:// URL as a Target; anything else is a SourceError (bad-url)."""
    shown = redact(url)

    def bad(why: str) -> SourceError:
        return SourceError(f"{shown}: {why}", HINTS["bad-url"], reason="bad-url", url=shown)

    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in url):
        raise bad("blanks or control characters in the URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise bad(f"scheme {parts.scheme or '(none)'!r} is not http or https")
    if not parts.hostname:
        raise bad("no host name")
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return Target(url, scheme, unquote(parts.hostname), port or DEFAULT_PORTS[scheme], path, auth, shown)


def redirected(current: Target, location: str) -> Target:
    try:
        new = parse_url(urljoin(current.url, location))
    except SourceError as exc:
        raise Failure("redirects", f"redirected to an unusable URL ({exc.message})", transient=False) from exc
    if current.scheme == "https" and new.scheme == "http":
        # Following would drop the certificate check without anyone asking for it.
        raise Failure("redirects", f"redirected from https to {new.shown}; not followed", transient=False)
    if new.authorization is None and current.authorization and new.origin == current.origin:
        new = dataclasses.replace(new, authorization=current.authorization)  # same server: same login
    return new


# -- connections -----------------------------------------------------------------------------
def connector(ca_file: str | None = None) -> Connect:
    """The default `connect`: a plain or TLS connection, opened by its first request. The host
    name is resolved then (getaddrinfo, in socket.create_connection), so the resolv.conf the
    network stage wrote is the one used. TLS checks the certificate and the host name against
    the system's CAs, or against `ca_file`'s alone when one is given."""
    contexts: list[ssl.SSLContext] = []

    def connect(ep: Endpoint) -> http.client.HTTPConnection:
        if ep.scheme == "http":
            return http.client.HTTPConnection(ep.host, ep.port, timeout=ep.timeout_s)
        if not contexts:
            contexts.append(tls_context(ca_file))
        return http.client.HTTPSConnection(ep.host, ep.port, timeout=ep.timeout_s, context=contexts[0])

    return connect


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    if ssl is None:
        raise Failure("tls", "this image has no TLS support (Python's _ssl was left out)", transient=False)
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:
        raise Failure("tls", f"cannot load the CA file {ca_file}: {exc}", transient=False) from exc


def exchange(
    connect: Connect, target: Target, method: str, headers: Mapping[str, str], *, timeout_s: float,
    max_redirects: int,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, Target]:
    """One request, following redirects; returns the open connection, the response (body
    unread) and the URL that gave it."""
    for _hop in range(max_redirects + 1):
        conn = connect(Endpoint(target.scheme, target.host, target.port, timeout_s))
        request = {"User-Agent": USER_AGENT, **headers}
        if target.authorization:
            request["Authorization"] = target.authorization
        try:
            conn.request(method, target.path, headers=request)  # adds Host, Accept-Encoding: identity
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if resp.status not in REDIRECTS:
            return conn, resp, target
        location = resp.getheader("Location")
        conn.close()
        if not location:
            raise Failure("protocol", f"HTTP {resp.status} without a Location", transient=False,
                          status=resp.status)  # fmt: skip
        target = redirected(target, location)
    raise Failure("redirects", f"more than {max_redirects} redirects", transient=False)


# -- judging failures ------------------------------------------------------------------------
def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def judge(exc: BaseException, *, in_body: bool) -> Failure:
    """What a raised error means: which reason, and whether another attempt may help."""
    if isinstance(exc, Failure):
        return exc
    if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
        return Failure("tls", f"certificate not verified: {exc.verify_message or exc}", transient=False)
    if ssl is not None and isinstance(exc, ssl.SSLError) and not isinstance(
        exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
    ):  # a protocol mismatch (e.g. https to a plain HTTP port), not a dropped link
        return Failure("tls", f"TLS failed: {exc.reason or exc}", transient=False)
    if isinstance(exc, socket.gaierror):  # the network may not be up yet: retried
        return Failure("unresolved", f"cannot resolve the host name ({describe(exc)})", transient=True)
    if in_body:
        return Failure("interrupted", f"connection lost mid-file ({describe(exc)})", transient=True)
    if isinstance(exc, TimeoutError) or (isinstance(exc, OSError) and exc.errno in UNREACHABLE_ERRNOS):
        return Failure("unreachable", f"server unreachable ({describe(exc)})", transient=True)
    return Failure("interrupted", f"connection failed ({describe(exc)})", transient=True)


def status_failure(status: int, phrase: str) -> Failure:
    text = f"HTTP {status} {phrase}".rstrip()
    if status in TRANSIENT_STATUS:
        return Failure("http-status", text, transient=True, status=status)
    reason = {404: "not-found", 410: "not-found", 401: "forbidden", 403: "forbidden", 407: "forbidden"}
    return Failure(reason.get(status, "http-status"), text, transient=False, status=status)


def quiet(_message: str) -> None:
    pass


class Attempts:
    """Failed attempts in a row (reset by progress), the back-off between them, the final error."""

    def __init__(
        self, retries: int, backoff_s: float, max_backoff_s: float, sleep: Callable[[float], object], log: Log
    ) -> None:
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.sleep = sleep
        self.log = log
        self.failures = 0  # all of them, for the report
        self.in_row = 0

    def failed(self, failure: Failure, shown: str) -> None:
        """Count a failed attempt; wait before the next one, or raise when none is left."""
        self.failures += 1
        self.in_row += 1
        if not failure.transient or self.in_row > self.retries:
            raise self.error(failure, shown)
        delay = min(self.backoff_s * 2 ** (self.in_row - 1), self.max_backoff_s)
        self.log(f"http: {shown}: {failure.text}; retry {self.in_row}/{self.retries} in {delay:g} s")
        self.sleep(delay)

    def progressed(self) -> None:
        self.in_row = 0

    def error(self, failure: Failure, shown: str) -> SourceError:
        tries = f" after {self.in_row} attempts" if failure.transient and self.in_row > 1 else ""
        return SourceError(f"{shown}: {failure.text}{tries}", HINTS[failure.reason], reason=failure.reason,
                           url=shown, status=failure.status)  # fmt: skip
