"""The boot side's HTTP(S) restore-data reader against a real server on 127.0.0.1 started here.

The server (tests/http_test_server.py) misbehaves on cue: drops, resets and stalls, ignored
ranges, a file replaced mid-read, redirects, logins, short ranges, 503s, a 64 MiB body.
Every test stops by itself: its server is shut down on the way out, stalls are released.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import socket
import ssl
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import libarchive
import pytest

from initrd_composer.boot.sources import SourceError, http_wire
from initrd_composer.boot.sources.http import CHUNK_SIZE, Endpoint, HttpStream, parse_url, probe, redact
from initrd_composer.runner import run
from tests.http_test_server import Drop, Scenario, Served, serving

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20
DATA = random.Random(20240601).randbytes(5 * MiB + 12345)  # not a multiple of anything
DATA_SHA = hashlib.sha256(DATA).hexdigest()


def read_all(stream: HttpStream, size: int = MiB) -> tuple[bytes, list[bytes]]:
    """Everything the stream gives, read as a restore would: `size` bytes at a time."""
    got: list[bytes] = []
    while chunk := stream.read(size):
        got.append(chunk)
    return b"".join(got), got


def delivered_before_error(stream: HttpStream) -> tuple[bytes, SourceError]:
    got = bytearray()
    with pytest.raises(SourceError) as info:
        while chunk := stream.read(MiB):
            got += chunk
    return bytes(got), info.value


def stream(url: str, sleeps: list[float] | None = None, **kw: Any) -> HttpStream:
    """A stream with test-sized timeouts and a recorded (not slept) back-off."""
    options: dict[str, Any] = {"timeout_s": 5.0, "retries": 3, "backoff_s": 0.5}
    options.update(kw)
    return HttpStream(url, sleep=(sleeps if sleeps is not None else []).append, **options)


def scenario_with_data(**kw: Any) -> Scenario:
    return Scenario(files={"/data.tar": Served(DATA)}, **kw)


# -- reading whole, and resuming ---------------------------------------------------------------
def test_a_multi_mib_file_is_read_whole() -> None:
    sc = scenario_with_data()
    with serving(sc) as base, stream(f"{base}/data.tar") as s:
        data, chunks = read_all(s)
        stats = s.stats()
    assert hashlib.sha256(data).hexdigest() == DATA_SHA
    assert max(len(c) for c in chunks) <= MiB
    assert sc.ranges() == [None]
    assert (stats.bytes, stats.size, stats.complete) == (len(DATA), len(DATA), True)
    assert (stats.resumes, stats.failures) == (0, 0)
    assert stats.etag == '"v1"' and stats.seconds > 0
    report = stats.report()
    assert report["kind"] == "http" and report["ok"] is True and report["error"] is None
    assert report["source"] == f"{base}/data.tar" and report["bytes"] == len(DATA)


@pytest.mark.parametrize("drops", [[1_234_567], [1_234_567, 2_000_003]], ids=["once", "twice"])
def test_a_dropped_connection_resumes_at_the_byte_reached(drops: list[int]) -> None:
    sc = scenario_with_data(drops=[Drop(k) for k in drops])
    sleeps: list[float] = []
    log: list[str] = []
    with serving(sc) as base, stream(f"{base}/data.tar", sleeps, log=log.append) as s:
        data, _ = read_all(s)
        stats = s.stats()
    assert hashlib.sha256(data).hexdigest() == DATA_SHA
    offsets = [sum(drops[:i]) for i in range(1, len(drops) + 1)]
    assert sc.ranges() == [None] + [f"bytes={k}-" for k in offsets]
    assert [r.if_range for r in sc.requests[1:]] == ['"v1"'] * len(drops)
    assert stats.resumes == len(drops) and stats.failures == len(drops)
    assert sleeps == [0.5] * len(drops)  # progress in between: each drop is a first failure
    assert sum("resumed at byte" in line for line in log) == len(drops)


def chunk_start(k: int) -> int:
    """Where a read that failed with an error at byte k resumes: the start of the chunk in flight
    (http.client does not say how much of a failed read arrived; a clean close it does)."""
    return k - k % CHUNK_SIZE


@pytest.mark.parametrize(
    ("drop", "kw"),
    [(Drop(3_000_001, "reset"), {}), (Drop(2_500_000, "stall"), {"timeout_s": 1.0})],
    ids=["reset", "timeout"],
)
def test_a_reset_or_stalled_connection_resumes(drop: Drop, kw: dict[str, Any]) -> None:
    sc = scenario_with_data(drops=[drop])
    with serving(sc) as base, stream(f"{base}/data.tar", **kw) as s:
        data, _ = read_all(s)
        stats = s.stats()
    assert hashlib.sha256(data).hexdigest() == DATA_SHA
    assert sc.ranges() == [None, f"bytes={chunk_start(drop.after)}-"]
    assert (stats.resumes, stats.failures) == (1, 1)


def test_a_chunked_body_cut_mid_chunk_resumes() -> None:
    sc = scenario_with_data(chunked=True, drops=[Drop(1_000_000)])
    with serving(sc) as base, stream(f"{base}/data.tar") as s:
        data, _ = read_all(s)
        assert s.stats().resumes == 1
    assert hashlib.sha256(data).hexdigest() == DATA_SHA
    assert sc.ranges() == [None, f"bytes={chunk_start(1_000_000)}-"]


def test_a_chunked_body_cut_before_its_last_chunk_ends_at_the_end() -> None:
    """All data arrived but not the terminating chunk: the resume gets 416 'bytes */SIZE', EOF."""
    sc = scenario_with_data(chunked=True, drops=[Drop(len(DATA))])
    with serving(sc) as base, stream(f"{base}/data.tar") as s:
        data, _ = read_all(s)
        stats = s.stats()
    assert hashlib.sha256(data).hexdigest() == DATA_SHA
    assert sc.ranges() == [None, f"bytes={len(DATA)}-"]
    assert stats.complete and stats.failures == 1


def test_short_ranges_are_continued_without_counting_a_failure() -> None:
    sc = scenario_with_data(drops=[Drop(100_000)], max_range=MiB)
    with serving(sc) as base, stream(f"{base}/data.tar") as s:
        data, _ = read_all(s)
        stats = s.stats()
    assert hashlib.sha256(data).hexdigest() == DATA_SHA
    assert len(sc.ranges()) == 2 + len(DATA[100_000:]) // MiB
    assert (stats.resumes, stats.failures) == (1, 1)


# -- what must not be resumed ------------------------------------------------------------------
def test_a_server_that_ignores_range_after_a_drop_is_an_error() -> None:
    sc = scenario_with_data(drops=[Drop(1_500_000)], ignore_range=True)
    with serving(sc) as base, stream(f"{base}/data.tar") as s:
        got, err = delivered_before_error(s)
        assert got == DATA[:1_500_000]  # nothing restarted, nothing duplicated
        assert s.stats().bytes == 1_500_000
        with pytest.raises(SourceError) as again:  # and never a quiet EOF afterwards
            s.read(10)
        assert again.value is err and s.error is err
    assert err.reason == "range-ignored" and err.status == 200
    assert "Range" in err.message and "data.tar" in err.message and err.hint


@pytest.mark.parametrize("honour_if_range", [True, False], ids=["200-full", "206-new-etag"])
def test_a_file_replaced_mid_read_is_an_error(honour_if_range: bool) -> None:
    sc = scenario_with_data(drops=[Drop(2_000_000)], etag_after_first='"v2"', honour_if_range=honour_if_range)
    with serving(sc) as base, stream(f"{base}/data.tar") as s:
        got, err = delivered_before_error(s)
        report = s.stats().report(err)
    assert got == DATA[:2_000_000]
    assert err.reason == "changed" and '"v1"' in err.message and '"v2"' in err.message
    assert report["ok"] is False and report["reason"] == "changed" and report["error"] == err.message


def test_a_wrong_content_range_is_an_error() -> None:
    sc = scenario_with_data(drops=[Drop(1_000_000)], shift_range=10)
    with serving(sc) as base, stream(f"{base}/data.tar") as s:
        got, err = delivered_before_error(s)
    assert got == DATA[:1_000_000]
    assert err.reason == "protocol" and "999990" in err.message


# -- final errors and bounded retries ----------------------------------------------------------
def test_not_found_is_final_without_retries() -> None:
    sc = scenario_with_data()
    sleeps: list[float] = []
    with serving(sc) as base, stream(f"{base}/nothing.tar", sleeps) as s:
        _, err = delivered_before_error(s)
    assert (err.reason, err.status) == ("not-found", 404)
    assert "HTTP 404" in err.message and err.message.startswith(f"{base}/nothing.tar:")
    assert sleeps == [] and len(sc.requests) == 1


def closed_port() -> tuple[socket.socket, int]:
    """A port on 127.0.0.1 that refuses connections: bound (so nobody else takes it), not listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def test_a_server_that_is_down_is_retried_a_bounded_number_of_times() -> None:
    sock, port = closed_port()
    sleeps: list[float] = []
    url = f"http://127.0.0.1:{port}/data.tar"
    with sock, stream(url, sleeps, retries=5, backoff_s=1.0, max_backoff_s=3.0) as s:
        _, err = delivered_before_error(s)
        stats = s.stats()
    assert sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]  # exponential, capped
    assert err.reason == "unreachable" and "after 6 attempts" in err.message and "refused" in err.message
    assert stats.failures == 6 and stats.bytes == 0 and not stats.complete


def test_an_unresolvable_name_is_retried_then_final() -> None:
    def no_dns(ep: Endpoint) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    sleeps: list[float] = []
    with stream("http://restore.example/data.tar", sleeps, connect=no_dns) as s:
        _, err = delivered_before_error(s)
    assert err.reason == "unresolved" and len(sleeps) == 3 and "resolv.conf" in err.hint


def test_a_host_name_is_resolved_when_connecting() -> None:
    sc = scenario_with_data()
    with serving(sc) as base, stream(base.replace("127.0.0.1", "localhost") + "/data.tar") as s:
        data, _ = read_all(s)
    assert data == DATA


def test_a_busy_server_is_retried() -> None:
    sc = scenario_with_data(statuses={"/data.tar": [503, 502]})
    sleeps: list[float] = []
    with serving(sc) as base, stream(f"{base}/data.tar", sleeps) as s:
        data, _ = read_all(s)
    assert data == DATA and sleeps == [0.5, 1.0]


# -- redirects, login, TLS ---------------------------------------------------------------------
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_followed_and_resumes_go_to_its_target(code: int) -> None:
    sc = scenario_with_data(redirects={"/old.tar": (code, "/data.tar")}, drops=[Drop(1_000_000)])
    with serving(sc) as base, stream(f"{base}/old.tar") as s:
        data, _ = read_all(s)
        stats = s.stats()
    assert data == DATA
    assert [(r.path, r.range) for r in sc.requests] == [
        ("/old.tar", None), ("/data.tar", None), ("/data.tar", "bytes=1000000-")
    ]
    assert stats.url == f"{base}/old.tar" and stats.final_url == f"{base}/data.tar"


def test_a_redirect_loop_is_an_error() -> None:
    sc = scenario_with_data(redirects={"/a": (302, "/b"), "/b": (302, "/a")})
    with serving(sc) as base, stream(f"{base}/a", max_redirects=4) as s:
        _, err = delivered_before_error(s)
    assert err.reason == "redirects" and len(sc.requests) == 5


def test_the_url_login_is_sent_and_never_shown() -> None:
    login = "Basic " + base64.b64encode(b"restore:s3cr et").decode()
    sc = scenario_with_data(login=login)
    with serving(sc) as base:
        url = base.replace("://", "://restore:s3cr%20et@")
        with stream(f"{url}/data.tar") as s:
            assert read_all(s)[0] == DATA
            assert "s3cr" not in s.stats().url
        with stream(f"{url}/missing.tar") as s:
            _, err = delivered_before_error(s)
        with stream(f"{base}/data.tar") as s:
            _, refused = delivered_before_error(s)
    assert {r.authorization for r in sc.requests[:2]} == {login}
    assert err.reason == "not-found" and "s3cr" not in err.message and "restore:***@" in err.message
    assert refused.reason == "forbidden" and refused.status == 401
    assert redact("http://u:p@h/x") == "http://u:***@h/x" and redact("http://h/x") == "http://h/x"


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and that certificate."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"], timeout=60)  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


def test_https_verifies_against_the_given_ca(tls_pair: tuple[ssl.SSLContext, Path]) -> None:
    context, cert = tls_pair
    sc = scenario_with_data(drops=[Drop(777_777)])
    with serving(sc, context) as base:
        with stream(f"{base}/data.tar", ca_file=str(cert)) as s:
            assert read_all(s)[0] == DATA and s.stats().resumes == 1
        sleeps: list[float] = []
        with stream(f"{base}/data.tar", sleeps) as s:  # the system CAs do not know it
            _, err = delivered_before_error(s)
    assert err.reason == "tls" and "certificate" in err.message and sleeps == []


def test_https_is_never_redirected_to_http(tls_pair: tuple[ssl.SSLContext, Path]) -> None:
    context, cert = tls_pair
    with serving(scenario_with_data()) as plain:
        sc = scenario_with_data(redirects={"/data.tar": (302, f"{plain}/data.tar")})
        with serving(sc, context) as base, stream(f"{base}/data.tar", ca_file=str(cert)) as s:
            _, err = delivered_before_error(s)
    assert err.reason == "redirects" and "https to http" in err.message


def test_an_image_without_ssl_still_reads_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the build leaves out _ssl (libssl and libcrypto are large), http:// still works and
    https:// says why it cannot."""
    monkeypatch.setattr(http_wire, "ssl", None)
    sock, port = closed_port()
    sleeps: list[float] = []
    with sock, stream(f"https://127.0.0.1:{port}/x", sleeps) as s:
        _, no_tls = delivered_before_error(s)
    with serving(scenario_with_data()) as base, stream(f"{base}/data.tar") as s:
        assert read_all(s)[0] == DATA
    assert no_tls.reason == "tls" and "no TLS support" in no_tls.message and sleeps == []


@pytest.mark.parametrize(
    "url", ["ftp://host/x", "http:///x", "http://host:99999/x", "http://host/a b", "data.tar", "http://[::1/x"]
)
def test_a_bad_url_is_refused_at_once(url: str) -> None:
    with pytest.raises(SourceError) as info:
        HttpStream(url)
    assert info.value.reason == "bad-url"


def test_a_url_becomes_its_parts() -> None:
    t = parse_url("https://u:p%40ss@[fd00::1]:8443/a/b.tar?x=1#frag")
    assert (t.scheme, t.host, t.port, t.path) == ("https", "fd00::1", 8443, "/a/b.tar?x=1")
    assert t.authorization == "Basic " + base64.b64encode(b"u:p@ss").decode()
    assert "p%40ss" not in t.shown


# -- as the restore stage will read it ----------------------------------------------------------
def tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_libarchive_reads_a_tar_across_a_drop() -> None:
    files = {"etc/fstab": DATA[:1000], "usr/big": DATA, "var/last": DATA[7:2_000_007]}
    sc = Scenario(files={"/set.tar": Served(tar_of(files))}, drops=[Drop(2_345_678)])
    with serving(sc) as base, stream(f"{base}/set.tar") as s:
        with libarchive.stream_reader(s, block_size=MiB) as archive:
            got = {entry.pathname: b"".join(entry.get_blocks()) for entry in archive}
        stats = s.stats()
    assert got == files
    assert stats.resumes == 1 and stats.complete  # complete though libarchive stopped at the tar's end


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed exception
def test_libarchive_sees_a_truncated_archive_and_the_stream_keeps_why() -> None:
    """libarchive-c calls readinto from a ctypes callback, where an exception is printed and
    swallowed; libarchive then reports a truncated archive. The cause stays on `stream.error`."""
    sc = Scenario(files={"/set.tar": Served(tar_of({"usr/big": DATA}))}, drops=[Drop(1_000_000)],
                  ignore_range=True)  # fmt: skip
    with serving(sc) as base, stream(f"{base}/set.tar") as s:
        with pytest.raises(libarchive.ArchiveError), libarchive.stream_reader(s, block_size=MiB) as archive:
            for entry in archive:
                for _block in entry.get_blocks():
                    pass
        assert s.error is not None and s.error.reason == "range-ignored"
        assert s.stats().report(s.error)["ok"] is False


# -- memory ------------------------------------------------------------------------------------
def test_a_64_mib_file_is_streamed_in_little_memory() -> None:
    big = Served(generated=64 * MiB)
    expected = hashlib.sha256()
    for piece in big.pieces(0, big.size):
        expected.update(piece)
    sc = Scenario(files={"/big.tar": big}, drops=[Drop(40 * MiB + 5)])
    with serving(sc) as base, stream(f"{base}/big.tar") as s:
        sha = hashlib.sha256()
        tracemalloc.start()
        try:
            while chunk := s.read(MiB):
                sha.update(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        stats = s.stats()
    assert sha.hexdigest() == expected.hexdigest()
    assert stats.bytes == 64 * MiB and stats.resumes == 1
    assert peak < 4 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"


# -- probing -----------------------------------------------------------------------------------
def test_probe_reports_size_ranges_and_etag() -> None:
    sc = scenario_with_data()
    with serving(sc) as base:
        found = probe(f"{base}/data.tar")
    assert (found.status, found.method, found.size, found.accept_ranges, found.etag) == (
        200, "HEAD", len(DATA), True, '"v1"'
    )
    assert [r.method for r in sc.requests] == ["HEAD"]


def test_probe_falls_back_to_a_range_get_when_head_is_refused() -> None:
    sc = Scenario(files={"/data.tar": Served(DATA), "/empty": Served(b"")}, head_refused=True)
    with serving(sc) as base:
        found = probe(f"{base}/data.tar")
        empty = probe(f"{base}/empty")
    assert (found.status, found.method, found.size, found.accept_ranges) == (206, "GET", len(DATA), True)
    assert (empty.status, empty.size) == (416, 0)
    assert [(r.method, r.range) for r in sc.requests][:2] == [("HEAD", None), ("GET", "bytes=0-0")]


def test_probe_tells_unreachable_from_not_found() -> None:
    sc = scenario_with_data(ignore_range=True)
    sock, port = closed_port()
    sleeps: list[float] = []
    with serving(sc) as base, sock:
        with pytest.raises(SourceError) as missing:
            probe(f"{base}/nothing", sleep=sleeps.append)
        no_ranges = probe(f"{base}/data.tar")
        with pytest.raises(SourceError) as down:
            probe(f"http://127.0.0.1:{port}/data.tar", sleep=sleeps.append, retries=2)
    assert (missing.value.reason, missing.value.status) == ("not-found", 404)
    assert no_ranges.accept_ranges is False
    assert down.value.reason == "unreachable" and sleeps == [1.0, 2.0]
