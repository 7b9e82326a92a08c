"""ld.so.cache writer: byte layout, glibc's ordering, host ldconfig and a real ld.so as oracles."""

from __future__ import annotations

import itertools
import re
import shutil
import struct
from pathlib import Path

import pytest

from initrd_composer.build.elf_closure import elf_closure
from initrd_composer.build.ldcache import CACHE_MAGIC, build_ld_so_cache, dl_cache_libcmp
from initrd_composer.image.materialize import materialize
from initrd_composer.runner import run

HOST_CACHE = Path("/etc/ld.so.cache")


def test_libcmp_compares_digit_runs_numerically() -> None:
    assert dl_cache_libcmp("libfoo.so.10", "libfoo.so.9") > 0
    assert dl_cache_libcmp("libfoo.so.9", "libfoo.so.10") < 0
    assert dl_cache_libcmp("libfoo.so.1", "libfoo.so.1") == 0
    assert dl_cache_libcmp("libfoo.so", "libfoo.so.1") < 0
    assert dl_cache_libcmp("libfoo.so.1", "libfoo.so") > 0
    assert dl_cache_libcmp("lib2", "libz") > 0  # a digit sorts after any other character
    assert dl_cache_libcmp("libz", "lib2") < 0
    assert dl_cache_libcmp("liba", "libb") < 0
    assert dl_cache_libcmp("libc.so.007", "libc.so.7") == 0


def test_layout_of_header_entries_and_strings() -> None:
    data = build_ld_so_cache([("libb.so.1", "/lib/libb.so.1"), ("liba.so.1", "/lib/liba.so.1")])
    magic, nlibs, len_strings, flags, ext = struct.unpack_from("<20sIIB3xI", data)
    assert (magic, nlibs, flags, ext) == (CACHE_MAGIC, 2, 2, 0)
    assert data[36:48] == bytes(12)
    assert len(data) == 48 + 2 * 24 + len_strings
    decoded = []
    for i in range(nlibs):
        eflags, key, value, osv, hwcap = struct.unpack_from("<iIIIQ", data, 48 + 24 * i)
        assert (eflags, osv, hwcap) == (0x0303, 0, 0)
        decoded.append((_cstr(data, key), _cstr(data, value)))
    assert decoded == [("libb.so.1", "/lib/libb.so.1"), ("liba.so.1", "/lib/liba.so.1")]


def test_output_is_canonical_and_first_path_wins() -> None:
    one = build_ld_so_cache([("liba.so.1", "/x/liba.so.1"), ("libb.so.2", "/x/libb.so.2")])
    two = build_ld_so_cache(
        [("libb.so.2", "/x/libb.so.2"), ("liba.so.1", "/x/liba.so.1"), ("liba.so.1", "/y")]
    )
    assert one == two
    with pytest.raises(ValueError, match=r"bad ld\.so\.cache entry"):
        build_ld_so_cache([("liba.so.1", "relative/path")])


def _cstr(data: bytes, offset: int) -> str:
    return data[offset : data.index(b"\0", offset)].decode()


def _host_cache_keys() -> list[tuple[str, str]]:
    """(key, value) pairs of the host's ld.so.cache in file order, as glibc's ldconfig wrote."""
    data = HOST_CACHE.read_bytes()
    start = data.find(CACHE_MAGIC)
    nlibs = struct.unpack_from("<I", data, start + 20)[0]
    pairs = []
    for i in range(nlibs):
        _, key, value, _, _ = struct.unpack_from("<iIIIQ", data, start + 48 + 24 * i)
        # offsets are from the new-format header, which is the file start for new-only caches
        pairs.append((_cstr(data, start + key), _cstr(data, start + value)))
    return pairs


def test_order_matches_host_ldconfig() -> None:
    assert HOST_CACHE.is_file(), "glibc's ldconfig (libc-bin) keeps /etc/ld.so.cache on every Debian"
    host = _host_cache_keys()
    keys = [k for k, _ in host]
    assert len(keys) > 50
    for left, right in itertools.pairwise(keys):
        assert dl_cache_libcmp(left, right) >= 0, (left, right)
    # on unique keys our writer reproduces ldconfig's order exactly
    unique = [k for k in dict.fromkeys(keys) if keys.count(k) == 1]
    ours = build_ld_so_cache([(k, "/x/" + k) for k in reversed(unique)])
    nlibs = struct.unpack_from("<I", ours, 20)[0]
    written = [_cstr(ours, struct.unpack_from("<iI", ours, 48 + 24 * i)[1]) for i in range(nlibs)]
    assert written == [k for k in keys if k in set(unique)]


def test_host_ldconfig_prints_our_entries(tmp_path: Path) -> None:
    pairs = [
        ("libudev.so.1", "/usr/lib/x86_64-linux-gnu/libudev.so.1"),
        ("libarchive.so.13", "/usr/lib/x86_64-linux-gnu/libarchive.so.13"),
        ("libfoo.so.10", "/opt/libfoo.so.10"),
        ("libfoo.so.9", "/opt/libfoo.so.9"),
    ]
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(build_ld_so_cache(pairs))
    out = run(["ldconfig", "-C", cache, "-p"], env={"LC_ALL": "C"}).stdout.decode()
    assert out.splitlines()[0] == f"4 libs found in cache `{cache}'"
    listed = re.findall(r"^\t(\S+) \(libc6,x86-64\) => (\S+)$", out, re.M)
    assert listed == [
        ("libudev.so.1", "/usr/lib/x86_64-linux-gnu/libudev.so.1"),
        ("libfoo.so.10", "/opt/libfoo.so.10"),
        ("libfoo.so.9", "/opt/libfoo.so.9"),
        ("libarchive.so.13", "/usr/lib/x86_64-linux-gnu/libarchive.so.13"),
    ]


@pytest.mark.root
def test_real_ld_so_finds_libc_only_through_our_cache(tmp_path: Path) -> None:
    """mt-st needs libc.so.6; we move libc outside every default directory so that only
    a correct, correctly sorted cache (binary-searched by ld.so) can lead to it."""
    chroot = shutil.which("chroot")
    assert chroot is not None
    moved = "opt/hidden/libc.so.6"
    entries = [e for e in elf_closure(["/usr/bin/mt-st"]) if not e.path.endswith("/libc.so.6")]
    materialize(entries, tmp_path)
    (tmp_path / "opt/hidden").mkdir(parents=True)
    shutil.copyfile("/usr/lib/x86_64-linux-gnu/libc.so.6", tmp_path / moved)
    without = run([chroot, tmp_path, "/usr/bin/mt-st", "--version"], check=False)
    assert without.returncode != 0 and b"libc.so.6" in without.stderr
    # plenty of neighbours so that the binary search takes several steps
    pairs = [(k, v) for k, v in _host_cache_keys() if k != "libc.so.6"] if HOST_CACHE.is_file() else []
    pairs += [(f"libfill{i}.so.{i}", f"/nowhere/libfill{i}.so.{i}") for i in range(40)]
    pairs.append(("libc.so.6", "/" + moved))
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/ld.so.cache").write_bytes(build_ld_so_cache(pairs))
    with_cache = run([chroot, tmp_path, "/usr/bin/mt-st", "--version"], check=False)
    assert with_cache.returncode == 0, with_cache.stderr
    assert b"mt-st" in with_cache.stdout + with_cache.stderr
