"""A restore set read over HTTP (boot/sources/http_set.py) from the test server on loopback:
the manifest and layout read whole, a missing archive refused before any extraction, and
archives streamed into the extraction, a dropped connection resumed mid-archive with every
file still verified; a stream that cannot resume fails naming the URL, not as libarchive's
"truncated archive"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from initrd_composer.boot.cmdline import parse_cmdline
from initrd_composer.boot.restore.extract_all import ExtractJob, extract_and_verify, failure_lines
from initrd_composer.boot.restore.stage import read_set
from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.sources import Choice, MediaContext
from initrd_composer.boot.sources.http_set import SetUrl, manifest_url, set_base
from initrd_composer.boot.sources.http_source import find
from initrd_composer.capture.set_writer import write_set
from tests.http_test_server import Drop, Scenario, directory_files, serving
from tests.test_restore_set_roundtrip import layout_of


def _set(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for i in range(400):
        sub = root / f"d{i % 9}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.bin").write_bytes(os.urandom(2000 + i))
    (root / "link").symlink_to("d1")
    set_dir = tmp_path / "set"
    write_set(set_dir, [("root", root)], layout=layout_of([("root", root)]))
    return set_dir


def _extract(location: SetUrl, tmp_path: Path) -> list[str]:
    manifest, _layout = read_set(location)
    dest = tmp_path / "dest"
    dest.mkdir()
    lines: list[str] = []
    results = extract_and_verify([ExtractJob(manifest.archive("root"), location, dest)], lines.append)
    return failure_lines(results) or [f"ok {len(manifest.archive('root').files)}"]


def test_set_base_names_the_directory() -> None:
    assert set_base("http://h/sets/web1") == "http://h/sets/web1/"
    assert set_base("http://h/sets/web1/manifest.json") == "http://h/sets/web1/"
    assert set_base("http://u:p@h/sets/", "web 1") == "http://u:p@h/sets/web%201/"
    assert manifest_url("http://h/sets/web1/") == "http://h/sets/web1/manifest.json"


def test_an_archive_streamed_over_a_dropped_connection_still_verifies(tmp_path: Path) -> None:
    set_dir = _set(tmp_path)
    sc = Scenario(files=directory_files(set_dir, "/set/"), path_drops={"/set/root.pax.zst": [Drop(100_000)]})
    with serving(sc) as base:
        result = _extract(SetUrl(base + "/set/"), tmp_path)
    assert result[0].startswith("ok "), result
    ranges = [r.range for r in sc.requests if r.path == "/set/root.pax.zst" and r.method == "GET"]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1] and ranges[1].startswith("bytes="), ranges
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0


def test_a_set_whose_archive_is_not_served_is_refused(tmp_path: Path) -> None:
    set_dir = _set(tmp_path)
    files = directory_files(set_dir, "/set/")
    del files["/set/root.pax.zst"]
    with serving(Scenario(files=files)) as base:
        with pytest.raises(RestoreSetError, match=r"missing root\.pax\.zst"):
            read_set(SetUrl(base + "/set/"))


def test_no_manifest_at_the_url_is_an_incomplete_set(tmp_path: Path) -> None:
    with serving(Scenario(files={})) as base, pytest.raises(RestoreSetError, match="incomplete: no manifest"):
        read_set(SetUrl(base + "/nothing/"))


def test_a_stream_that_cannot_resume_fails_naming_the_url(tmp_path: Path) -> None:
    """The server ignores Range after the drop: the stream must not restart from byte 0
    under libarchive's feet; the failure says why, with the URL."""
    set_dir = _set(tmp_path)
    sc = Scenario(files=directory_files(set_dir, "/set/"), ignore_range=True,
                  path_drops={"/set/root.pax.zst": [Drop(100_000)]})  # fmt: skip
    with serving(sc) as base:
        failures = _extract(SetUrl(base + "/set/"), tmp_path)
    assert len(failures) == 1, failures
    assert failures[0].startswith(f"root: cannot read root.pax.zst: {base}/set/root.pax.zst: "), failures
    assert "ignores Range" in failures[0]


def _found_in(mode: str, url: str) -> str:
    up = {"ok": True, "interfaces": [{"address": "x"}]}
    ctx = MediaContext(cfg=parse_cmdline(f"{mode} url={url}"), timeout_s=5, log=lambda _line: None,
                       sleep=lambda _s: None, network=up)  # fmt: skip
    return str(find(ctx, Choice("http", url, "url=")).source)


def test_expert_finds_the_set_by_its_manifest_else_takes_the_url_as_given(tmp_path: Path) -> None:
    set_dir = _set(tmp_path)
    files = directory_files(set_dir, "/set/")
    with serving(Scenario(files=files)) as base:
        assert _found_in("expert", base + "/set/") == base + "/set/manifest.json"
        assert _found_in("expert", base + "/set/layout.json") == base + "/set/layout.json"
        with pytest.raises(Exception, match="404"):
            _found_in("nuke", base + "/set/layout.json/")
