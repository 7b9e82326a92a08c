"""An archive never writes outside its target: not through a symlink it made (checked by name
onto an empty filesystem, by libarchive elsewhere), not by `..`, not by an absolute name."""

from __future__ import annotations

import ctypes
import io
from pathlib import Path

import libarchive
import pytest
from libarchive.entry import ArchiveEntry

from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.extract import extract_stream

_LIB = libarchive.ffi.libarchive
for _name in ("archive_entry_copy_symlink", "archive_entry_copy_hardlink"):
    getattr(_LIB, _name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    getattr(_LIB, _name).restype = None


def _archive(entries: list[tuple[str, str, str]]) -> io.BytesIO:
    """A pax archive of (name, kind, data-or-link-target) entries, as an attacker makes it."""
    out = io.BytesIO()
    with libarchive.custom_writer(out.write, "pax") as archive:
        for name, kind, data in entries:
            if kind == "file":
                archive.add_file_from_memory(name, len(data), data.encode())
            elif kind == "dir":
                archive.add_file_from_memory(name, 0, b"", filetype=0o040000, permission=0o755)
            else:  # a symlink or a hard link: a header only
                entry = ArchiveEntry(pathname=name, filetype=0o120000 if kind == "symlink" else 0o100000,
                                     perm=0o777 if kind == "symlink" else 0o644)  # fmt: skip
                copy = "archive_entry_copy_symlink" if kind == "symlink" else "archive_entry_copy_hardlink"
                getattr(_LIB, copy)(entry._entry_p, data.encode())
                libarchive.ffi.write_header(archive._pointer, entry._entry_p)
    out.seek(0)
    return out


@pytest.fixture(params=["fresh", "used"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """An empty filesystem root (lost+found only: the guard by name) or a used one (libarchive's)."""
    dest = tmp_path / "target"
    dest.mkdir()
    (dest / ("lost+found" if request.param == "fresh" else "already-here")).mkdir()
    return dest


def test_a_file_under_a_symlink_the_archive_made_is_refused(target: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    stream = _archive([("etc", "symlink", str(outside)), ("etc/passwd", "file", "owned")])
    with pytest.raises(RestoreSetError, match="at etc/passwd"):
        extract_stream(stream, target)
    assert list(outside.iterdir()) == []  # nothing was written through it


def test_a_hard_link_to_a_file_beyond_a_symlink_is_refused(target: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    stream = _archive([("d", "symlink", str(outside)), ("grab", "hardlink", "d/secret")])
    with pytest.raises(RestoreSetError, match="at grab"):
        extract_stream(stream, target)
    assert not (target / "grab").exists()


@pytest.mark.parametrize("name", ["../escaped", "/tmp/initrd-composer-escaped", "a/../../escaped"])
def test_dot_dot_and_absolute_names_are_refused(target: Path, name: str) -> None:
    with pytest.raises(RestoreSetError, match="cannot extract"):
        extract_stream(_archive([(name, "file", "x")]), target)
    assert not (target.parent / "escaped").exists() and not Path("/tmp/initrd-composer-escaped").exists()


def test_symlinks_and_a_symlink_replaced_by_a_directory_are_fine(target: Path) -> None:
    entries = [
        ("lib", "symlink", "usr/lib"),  # merged /usr: a symlink at the top, files beside it
        ("usr", "dir", ""),
        ("usr/lib", "dir", ""),
        ("usr/lib/libc.so", "file", "elf"),
        ("dangling", "symlink", "/nowhere"),
        ("was-a-link", "symlink", "x"),
        ("was-a-link", "dir", ""),  # replaced: what is below it now is below a directory
        ("was-a-link/f", "file", "f"),
        ("also-lib", "hardlink", "lib"),  # a second name of the symlink itself
    ]
    assert extract_stream(_archive(entries), target) == len(entries)
    assert (target / "lib").is_symlink() and (target / "usr/lib/libc.so").read_text() == "elf"
    assert (target / "was-a-link/f").read_text() == "f" and (target / "also-lib").is_symlink()
