"""The restore-set manifest format: records, JSON round trip, validation, refusal."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.manifest import (
    FORMAT,
    MANIFEST_NAME,
    VERSION,
    ArchiveRecord,
    FileRecord,
    Manifest,
    check_archive_file,
    dumps,
    file_sha256,
    load_set,
    loads,
    xattr_digest,
)

EMPTY = xattr_digest([])


def _files() -> tuple[FileRecord, ...]:
    return (
        FileRecord(".", "dir", 0o755, 0, 0, 0, 1, xattr_sha256=EMPTY),
        FileRecord("a", "file", 0o644, 1, 2, 3, 10**18 + 5, sha256="ab" * 32, xattr_sha256=EMPTY),
        FileRecord("b", "hardlink", 0o644, 1, 2, 3, 10**18 + 5, link="a", xattr_sha256=EMPTY),
        FileRecord("l", "symlink", 0o777, 0, 0, 0, 7, link="nowhere", xattr_sha256=EMPTY),
        FileRecord("null", "char", 0o666, 0, 0, 0, 7, rdev=(1, 3), xattr_sha256=EMPTY),
        FileRecord("é\udcff" + "n" * 250, "fifo", 0o600, 0, 0, 0, 7, xattr_sha256=EMPTY),
    )


def _manifest() -> Manifest:
    return Manifest((ArchiveRecord("root", "root.pax.zst", "cd" * 32, 42, _files()),))


def _json() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(dumps(_manifest()))
    return parsed


def test_json_round_trip_keeps_every_field_and_odd_names() -> None:
    data = dumps(_manifest())
    assert data.isascii()  # non-ASCII and undecodable name bytes are escaped
    assert loads(data) == _manifest()
    head = json.loads(data)
    assert (head["format"], head["version"]) == (FORMAT, VERSION) == ("initrd-composer-restore-set", 1)
    assert set(head["archives"][0]["files"][1]) == {
        "path", "type", "mode", "uid", "gid", "size", "mtime_ns", "sha256", "link", "rdev", "xattr_sha256"
    }


def test_a_newer_version_is_refused_with_a_hint() -> None:
    data = _json()
    data["version"] = 2
    with pytest.raises(RestoreSetError, match="version 2 is not supported") as exc:
        loads(json.dumps(data).encode())
    assert "same initrd-composer release" in exc.value.hint


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="tar"), "not a restore-set manifest"),
        (lambda d: d["archives"][0]["files"][1].update(type="door"), "unknown file type"),
        (lambda d: d["archives"][0]["files"][1].update(path="../etc"), "leaves the archive root"),
        (lambda d: d["archives"][0]["files"][1].update(path="/etc"), "leaves the archive root"),
        (lambda d: d["archives"][0]["files"][1].update(sha256=None), "sha256 is for regular files"),
        (lambda d: d["archives"][0]["files"][3].update(link=None), "link is for symlinks"),
        (lambda d: d["archives"][0]["files"][4].update(rdev=None), "rdev is for device nodes"),
        (lambda d: d["archives"][0]["files"][2].update(link="zzz"), "hard link to unlisted zzz"),
        (lambda d: d["archives"][0]["files"][1].update(mode="644"), "'mode' must be int"),
        (lambda d: d["archives"][0]["files"][1].update(uid=True), "'uid' must be int"),
        (lambda d: d["archives"][0].update(file="../x"), "not a plain file name"),
        (lambda d: d["archives"][0]["files"].append(d["archives"][0]["files"][1]), "listed twice"),
        (lambda d: d["archives"].append(d["archives"][0]), "same name"),
    ],
)
def test_validation_names_what_is_wrong(change: Any, message: str) -> None:
    data = _json()
    change(data)
    with pytest.raises(RestoreSetError, match=message):
        loads(json.dumps(data).encode())


def test_not_json_is_refused() -> None:
    with pytest.raises(RestoreSetError, match="not valid JSON"):
        loads(b"{half")


def test_a_set_without_manifest_is_refused_as_incomplete(tmp_path: Path) -> None:
    (tmp_path / "root.pax.zst").write_bytes(b"x")
    with pytest.raises(RestoreSetError, match=f"incomplete: no {MANIFEST_NAME}") as exc:
        load_set(tmp_path)
    assert "manifest is written last" in exc.value.hint
    assert "\n" not in exc.value.message


def test_a_set_missing_an_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(dumps(_manifest()))
    with pytest.raises(RestoreSetError, match=r"incomplete: missing root\.pax\.zst"):
        load_set(tmp_path)
    (tmp_path / "root.pax.zst").write_bytes(b"x")
    assert load_set(tmp_path) == _manifest()


def test_archive_sha256_mismatch_names_the_archive(tmp_path: Path) -> None:
    (tmp_path / "root.pax.zst").write_bytes(b"x")
    with pytest.raises(RestoreSetError, match=r"archive root.pax.zst \(root\) is corrupted"):
        check_archive_file(tmp_path, _manifest().archives[0])


def test_lookup_by_name() -> None:
    assert _manifest().archive("root").file == "root.pax.zst"
    with pytest.raises(RestoreSetError, match="no archive named 'boot'"):
        _manifest().archive("boot")


def test_xattr_digest_is_order_independent_and_unambiguous() -> None:
    a = [(b"user.a", b"1"), (b"user.b", b"")]
    assert xattr_digest(a) == xattr_digest(reversed(a))
    assert xattr_digest([(b"user.a", b"1")]) != xattr_digest([(b"user.a1", b"")])
    assert xattr_digest([]) == EMPTY


def test_file_sha256_of_a_sparse_file_equals_that_of_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(5 << 20)
        f.seek(3 << 20)
        f.write(b"data")
    os.truncate(path, 6 << 20)  # ends with a hole
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
