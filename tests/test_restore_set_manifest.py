"""The restore-set manifest format: records, JSON round trip, validation, refusal."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.layout import LAYOUT_FORMAT, LAYOUT_VERSION, dump_layout
from initrd_composer.boot.restore_set.manifest import (
    FORMAT,
    MANIFEST_NAME,
    VERSION,
    ArchiveRecord,
    ExtraRecord,
    FileRecord,
    Manifest,
    check_archive_file,
    check_extra,
    dumps,
    file_sha256,
    load_set,
    loads,
    set_layout,
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


LAYOUT_TEXT = dump_layout({
    "format": LAYOUT_FORMAT, "version": LAYOUT_VERSION, "disks": [], "md_arrays": [],
    "lvm": {"volume_groups": []}, "fstab": None, "bootloader": {}, "refused": [],
    "filesystems": [{"device": "/dev/sda1", "type": "ext4", "uuid": None, "label": None, "mountpoint": None,
                     "features": None, "fstab": None, "archive": "root"},
                    {"device": "/dev/sda2", "type": "swap", "uuid": None, "label": None, "mountpoint": None,
                     "features": None, "fstab": None, "archive": None}],
})  # fmt: skip
GAP = b"\xeb\x63\x90" + bytes(509)


def _record(file: str, data: bytes) -> ExtraRecord:
    return ExtraRecord(file, hashlib.sha256(data).hexdigest(), len(data))


def _manifest() -> Manifest:
    return Manifest(
        (ArchiveRecord("root", "root.pax.zst", "cd" * 32, 42, _files()),),
        (_record("layout.json", LAYOUT_TEXT.encode()), _record("disk-sda-gap.bin", GAP)),
    )


def _write_set(directory: Path, manifest: Manifest | None = None) -> None:
    """A complete set directory (archive content is not checked by load_set)."""
    (directory / MANIFEST_NAME).write_bytes(dumps(manifest or _manifest()))
    (directory / "root.pax.zst").write_bytes(b"x")
    (directory / "layout.json").write_text(LAYOUT_TEXT)
    (directory / "disk-sda-gap.bin").write_bytes(GAP)


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
    assert set(head) == {"format", "version", "archives", "extras"}
    gap = {"file": "disk-sda-gap.bin", "sha256": hashlib.sha256(GAP).hexdigest(), "size": 512}
    assert head["extras"][1] == gap


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
        (lambda d: d.pop("extras"), "extras must be a list"),
        (lambda d: d["extras"][1].update(file="../gap"), "not a plain file name"),
        (lambda d: d["extras"][1].update(size="512"), "'size' must be int"),
        (lambda d: d["extras"][1].update(file="root.pax.zst"), "two files of the set have the same name"),
        (lambda d: d["extras"].append(d["extras"][0]), "two files of the set have the same name"),
        (lambda d: d["extras"][1].update(file="manifest.json"), "two files of the set have the same name"),
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
    _write_set(tmp_path)
    assert load_set(tmp_path) == _manifest()
    (tmp_path / "root.pax.zst").unlink()
    with pytest.raises(RestoreSetError, match=r"incomplete: missing root\.pax\.zst"):
        load_set(tmp_path)


@pytest.mark.parametrize("missing", ["layout.json", "disk-sda-gap.bin"])
def test_a_set_missing_an_extra_is_refused(tmp_path: Path, missing: str) -> None:
    _write_set(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(RestoreSetError, match=f"incomplete: missing {missing}") as exc:
        load_set(tmp_path)
    assert "copy the whole set directory" in exc.value.hint


def test_a_set_without_layout_json_is_refused(tmp_path: Path) -> None:
    _write_set(tmp_path, Manifest(_manifest().archives, _manifest().extras[1:]))
    with pytest.raises(RestoreSetError, match=r"incomplete: no layout\.json") as exc:
        load_set(tmp_path)
    assert "a restore needs the machine's layout" in exc.value.hint


def test_a_damaged_extra_is_named(tmp_path: Path) -> None:
    _write_set(tmp_path)
    manifest = load_set(tmp_path)
    for extra in manifest.extras:
        check_extra(tmp_path, extra)
    (tmp_path / "disk-sda-gap.bin").write_bytes(b"\xeb\x64" + GAP[2:])  # same size, one byte off
    with pytest.raises(RestoreSetError, match=r"disk-sda-gap\.bin of restore set .* corrupted: its sha256"):
        check_extra(tmp_path, manifest.extra("disk-sda-gap.bin"))
    (tmp_path / "disk-sda-gap.bin").write_bytes(GAP[:100])
    with pytest.raises(RestoreSetError, match="corrupted: its size differs"):
        check_extra(tmp_path, manifest.extra("disk-sda-gap.bin"))
    with pytest.raises(RestoreSetError, match=r"no file 'disk-sdb-gap\.bin'"):
        manifest.extra("disk-sdb-gap.bin")


def test_set_layout_checks_the_layout_and_its_archive_names(tmp_path: Path) -> None:
    _write_set(tmp_path)
    manifest = load_set(tmp_path)
    layout = set_layout(tmp_path, manifest)
    got = [(fs["device"], fs["archive"]) for fs in layout["filesystems"]]
    assert got == [("/dev/sda1", "root"), ("/dev/sda2", None)]
    broken = [
        (LAYOUT_TEXT.replace('"archive": "root"', '"archive": "boot"'), "names archive 'boot'"),
        (LAYOUT_TEXT.replace('"archive": "root",', ""), "has no archive key"),
        (LAYOUT_TEXT.replace('"version": 1', '"version": 7'), "layout version 7"),
    ]
    for text, message in broken:
        (tmp_path / "layout.json").write_text(text)
        extras = (_record("layout.json", text.encode()), *manifest.extras[1:])
        with pytest.raises(RestoreSetError, match=message):
            set_layout(tmp_path, Manifest(manifest.archives, extras))
    with pytest.raises(RestoreSetError, match=r"layout\.json of restore set .* is corrupted"):
        set_layout(tmp_path, manifest)  # the file no longer has the manifest's sha256


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
