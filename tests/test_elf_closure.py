"""ELF closure: real host binaries (checked against ldd) and hand-built ELF files in fake roots."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from initrd_composer.build.elf_closure import (
    ElfInfo,
    cache_pairs_for_entries,
    elf_closure,
    ld_so_conf_dirs,
    library_sonames,
    locate_library,
    merge_entries,
    path_entries,
    read_elf_info,
    resolve_elf_closure,
)
from initrd_composer.errors import ComposeError
from initrd_composer.image.entries import Entry, data_entry, dir_entry, symlink_entry
from initrd_composer.runner import run

EM_X86_64 = 62
EM_AARCH64 = 183


def make_elf(
    needed: tuple[str, ...] = (),
    *,
    soname: str | None = None,
    rpath: str | None = None,
    runpath: str | None = None,
    interp: str | None = None,
    machine: int = EM_X86_64,
) -> bytes:
    """A minimal ELF64 shared object: one PT_LOAD mapping the file at address 0, PT_DYNAMIC,
    optional PT_INTERP. Enough for pyelftools (and this closure) to read, not to run."""
    strtab = bytearray(b"\0")

    def string(text: str) -> int:
        offset = len(strtab)
        strtab.extend(text.encode() + b"\0")
        return offset

    tags: list[tuple[int, int]] = [(1, string(n)) for n in needed]  # DT_NEEDED
    if soname is not None:
        tags.append((14, string(soname)))
    if rpath is not None:
        tags.append((15, string(rpath)))
    if runpath is not None:
        tags.append((29, string(runpath)))
    phnum = 3 if interp else 2
    interp_off = 64 + 56 * phnum
    interp_bytes = (interp.encode() + b"\0") if interp else b""
    strtab_off = interp_off + len(interp_bytes)
    dyn_off = (strtab_off + len(strtab) + 7) & ~7
    tags += [(5, strtab_off), (10, len(strtab)), (0, 0)]  # DT_STRTAB, DT_STRSZ, DT_NULL
    dynamic = b"".join(struct.pack("<qQ", t, v) for t, v in tags)
    size = dyn_off + len(dynamic)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header += struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    phdrs = b""
    if interp:  # PT_INTERP
        phdrs += struct.pack(
            "<IIQQQQQQ", 3, 4, interp_off, interp_off, interp_off, len(interp_bytes), len(interp_bytes), 1
        )
    phdrs += struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, size, size, 0x1000)  # PT_LOAD
    phdrs += struct.pack(
        "<IIQQQQQQ", 2, 6, dyn_off, dyn_off, dyn_off, len(dynamic), len(dynamic), 8
    )  # PT_DYNAMIC
    body = header + phdrs + interp_bytes + bytes(strtab)
    return body + bytes(dyn_off - len(body)) + dynamic


def put(root: Path, path: str, data: bytes, mode: int = 0o755) -> None:
    host = root / path.lstrip("/")
    host.parent.mkdir(parents=True, exist_ok=True)
    host.write_bytes(data)
    host.chmod(mode)


def link(root: Path, path: str, target: str) -> None:
    host = root / path.lstrip("/")
    host.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, host)


@pytest.fixture
def merged_root(tmp_path: Path) -> Path:
    """A merged-/usr fake root with a loader, libc and an ld.so.conf with an include."""
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib64").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    for top in ("bin", "lib", "lib64"):
        link(root, top, f"usr/{top}")
    put(root, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", make_elf(soname="ld-linux-x86-64.so.2"))
    link(root, "/usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    put(root, "/usr/lib/x86_64-linux-gnu/libc.so.6", make_elf(soname="libc.so.6"))
    put(root, "/etc/ld.so.conf", b"# comment\ninclude /etc/ld.so.conf.d/*.conf\n", 0o644)
    put(root, "/etc/ld.so.conf.d/bar.conf", b"/opt/bar/lib  # trailing comment\n", 0o644)
    return root


INTERP = "/lib64/ld-linux-x86-64.so.2"


def paths_of(entries: list[Entry]) -> dict[str, Entry]:
    return {e.path: e for e in entries}


def test_fake_root_origin_runpath_chain_and_ld_so_conf(merged_root: Path) -> None:
    root = merged_root
    put(
        root,
        "/usr/bin/app",
        make_elf(("libfoo.so.1", "libc.so.6"), runpath="$ORIGIN/../lib/app", interp=INTERP),
    )
    put(root, "/usr/lib/app/libfoo.so.1.2.3", make_elf(("libbar.so.2",), soname="libfoo.so.1"))
    link(root, "/usr/lib/app/libfoo.so.1", "libfoo.so.1.2.3")
    put(root, "/opt/bar/lib/libbar.so.2", make_elf(("libc.so.6",), soname="libbar.so.2"))

    closure = resolve_elf_closure(["/bin/app"], root)
    entries = paths_of(closure.entries)
    assert entries["bin"] == symlink_entry("bin", "usr/bin", origin=entries["bin"].origin)
    assert entries["lib64"].target == "usr/lib64"
    assert entries["lib"].target == "usr/lib"
    assert entries["usr/bin/app"].kind == "file"
    assert entries["usr/bin/app"].source == root / "usr/bin/app"
    assert entries["usr/lib/app/libfoo.so.1"].target == "libfoo.so.1.2.3"
    assert entries["usr/lib/app/libfoo.so.1.2.3"].kind == "file"
    assert entries["opt/bar/lib/libbar.so.2"].kind == "file"
    assert entries["usr/lib64/ld-linux-x86-64.so.2"].target.endswith("ld-linux-x86-64.so.2")
    assert entries["usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"].kind == "file"
    assert entries["usr/lib/x86_64-linux-gnu/libc.so.6"].kind == "file"
    assert entries["opt/bar/lib"].kind == "dir"
    # sorted, unique, each parent a directory entry (no path runs through a symlink)
    paths = [e.path for e in closure.entries]
    assert paths == sorted(set(paths))
    for entry in closure.entries:
        parent = entry.path.rpartition("/")[0]
        assert not parent or entries[parent].kind == "dir", entry.path
    assert dict(closure.libraries) == {
        "ld-linux-x86-64.so.2": "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "libbar.so.2": "/opt/bar/lib/libbar.so.2",
        "libc.so.6": "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "libfoo.so.1": "/usr/lib/app/libfoo.so.1",
    }
    assert elf_closure(["/bin/app"], root) == closure.entries
    assert library_sonames(["/bin/app"], root) == closure.libraries


def test_missing_library_names_binary_and_library(merged_root: Path) -> None:
    put(merged_root, "/usr/bin/app", make_elf(("libnowhere.so.7",), interp=INTERP))
    with pytest.raises(ComposeError, match=r"usr/bin/app: needed library libnowhere\.so\.7"):
        elf_closure(["/usr/bin/app"], merged_root)


def test_non_elf_and_missing_file(merged_root: Path) -> None:
    put(merged_root, "/usr/bin/script", b"#!/bin/sh\necho hi\n")
    with pytest.raises(ComposeError, match=r"usr/bin/script: not an ELF file"):
        elf_closure(["/usr/bin/script"], merged_root)
    with pytest.raises(ComposeError, match=r"usr/bin/absent: no such file"):
        elf_closure(["/usr/bin/absent"], merged_root)


def test_symlink_loop_is_an_error(merged_root: Path) -> None:
    link(merged_root, "/usr/bin/a", "b")
    link(merged_root, "/usr/bin/b", "a")
    with pytest.raises(ComposeError, match="too many levels"):
        elf_closure(["/usr/bin/a"], merged_root)


def test_runpath_disables_rpath_and_rpath_is_inherited(merged_root: Path) -> None:
    root = merged_root
    for where in ("/opt/a", "/opt/b", "/opt/c"):
        put(root, f"{where}/libx.so.1", make_elf(soname="libx.so.1"))
    # both RPATH and RUNPATH: RUNPATH wins, RPATH ignored
    put(root, "/usr/bin/both", make_elf(("libx.so.1",), rpath="/opt/a", runpath="/opt/b"))
    assert "opt/b/libx.so.1" in paths_of(elf_closure(["/usr/bin/both"], root))
    assert "opt/a/libx.so.1" not in paths_of(elf_closure(["/usr/bin/both"], root))
    # the executable's RPATH also serves its libraries' needs (they have none of their own)
    put(root, "/usr/bin/rp", make_elf(("libmid.so.1",), rpath="/opt/c:/opt/mid"))
    put(root, "/opt/mid/libmid.so.1", make_elf(("libx.so.1",), soname="libmid.so.1"))
    assert "opt/c/libx.so.1" in paths_of(elf_closure(["/usr/bin/rp"], root))


def test_foreign_machine_library_is_skipped(merged_root: Path) -> None:
    root = merged_root
    put(root, "/opt/bar/lib/libq.so.1", make_elf(soname="libq.so.1", machine=EM_AARCH64))
    put(root, "/usr/lib/x86_64-linux-gnu/libq.so.1", make_elf(soname="libq.so.1"))
    put(root, "/usr/bin/app", make_elf(("libq.so.1",)))
    entries = paths_of(elf_closure(["/usr/bin/app"], root))
    assert "usr/lib/x86_64-linux-gnu/libq.so.1" in entries
    assert "opt/bar/lib/libq.so.1" not in entries


def test_ld_so_conf_includes(tmp_path: Path) -> None:
    put(tmp_path, "/etc/ld.so.conf", b"/first\ninclude conf.d/*.conf\n# /commented\n/last/\n")
    put(tmp_path, "/etc/conf.d/b.conf", b"/b1 /b2\n")
    put(tmp_path, "/etc/conf.d/a.conf", b"/a\ninclude /etc/more.conf\n")
    put(tmp_path, "/etc/more.conf", b"/more\n/first\n")
    assert ld_so_conf_dirs(tmp_path) == ["/first", "/a", "/more", "/b1", "/b2", "/last"]
    assert ld_so_conf_dirs(tmp_path / "nothing") == []


def test_elf_info_is_cached_per_size_and_mtime(tmp_path: Path) -> None:
    lib = tmp_path / "libc.so.6"
    lib.write_bytes(make_elf(soname="one.so"))
    first = read_elf_info(lib)
    assert read_elf_info(lib) is first
    lib.write_bytes(make_elf(("libz.so.1",), soname="two.so"))
    second = read_elf_info(lib)
    assert second.soname == "two.so" and second.needed == ("libz.so.1",)
    assert isinstance(second, ElfInfo)


def test_cache_pairs_prefer_soname_links(merged_root: Path) -> None:
    root = merged_root
    put(root, "/usr/lib/x86_64-linux-gnu/libfoo.so.1.0", make_elf(soname="libfoo.so.1"))
    link(root, "/usr/lib/x86_64-linux-gnu/libfoo.so.1", "libfoo.so.1.0")
    put(root, "/usr/lib/x86_64-linux-gnu/libbare.so.3", make_elf(soname="libbare.so.3"))
    put(root, "/usr/lib/x86_64-linux-gnu/_ext.so", make_elf(soname="_ext.so"))
    entries = path_entries(
        [
            "/usr/lib/x86_64-linux-gnu/libfoo.so.1",
            "/usr/lib/x86_64-linux-gnu/libbare.so.3",
            "/usr/lib/x86_64-linux-gnu/_ext.so",
        ],
        root,
    )
    assert cache_pairs_for_entries(entries) == [
        ("libbare.so.3", "/usr/lib/x86_64-linux-gnu/libbare.so.3"),
        ("libfoo.so.1", "/usr/lib/x86_64-linux-gnu/libfoo.so.1"),
    ]


def test_merge_entries_dedupes_adds_parents_and_refuses_conflicts() -> None:
    a = data_entry("etc/x", b"1", origin="first")
    merged = merge_entries([a], [data_entry("etc/x", b"1", origin="second"), dir_entry("etc")])
    assert merged == [dir_entry("etc"), a]
    with pytest.raises(ComposeError, match="etc/x is wanted twice"):
        merge_entries([a], [data_entry("etc/x", b"2")])
    with pytest.raises(ComposeError, match="lib is wanted twice"):
        merge_entries([symlink_entry("lib", "usr/lib")], [data_entry("lib/x", b"")])


def test_locate_library_on_host() -> None:
    found = locate_library("libudev.so.1")
    assert found.endswith("/libudev.so.1")
    with pytest.raises(ComposeError, match="libdoesnotexist"):
        locate_library("libdoesnotexist.so.9")


# --- the real host: python3.11 and busybox -----------------------------------------


def _ldd_real_paths(binary: str) -> set[str]:
    out = run(["ldd", binary]).stdout.decode()
    paths = set()
    for line in out.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0]
        if path.startswith("/"):
            paths.add(os.path.realpath(path))
    return paths


@pytest.mark.parametrize("binary", ["/usr/bin/python3.11", "/usr/sbin/lvm"])
def test_host_closure_matches_ldd(binary: str) -> None:
    entries = elf_closure([binary])
    files = {"/" + e.path for e in entries if e.kind == "file"}
    assert {os.path.realpath(f) for f in files} == _ldd_real_paths(binary) | {binary}
    for entry in entries:
        if entry.kind == "file":
            assert entry.source is not None and entry.source.is_file()
            assert os.path.realpath(entry.source) == str(entry.source)  # canonical paths


def test_host_python_keeps_symlink_chains() -> None:
    entries = paths_of(elf_closure(["/usr/bin/python3"]))
    assert entries["usr/bin/python3"].target == "python3.11"
    assert entries["usr/bin/python3.11"].kind == "file"
    assert entries["lib64"].kind == "symlink"
    assert entries["usr/lib64/ld-linux-x86-64.so.2"].kind == "symlink"
    assert entries["usr/lib/x86_64-linux-gnu/libz.so.1"].kind == "symlink"
    pairs = dict(library_sonames(["/usr/bin/python3"]))
    assert pairs["libz.so.1"] == "/usr/lib/x86_64-linux-gnu/libz.so.1"


def test_host_busybox_is_static() -> None:
    entries = elf_closure(["/bin/busybox"])
    files = [e.path for e in entries if e.kind == "file"]
    assert files == ["usr/bin/busybox"]
    assert read_elf_info(Path("/bin/busybox")).interp is None
