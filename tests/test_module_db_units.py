"""module_db on small texts: parser errors, softdep semantics, alias normalisation and
matching (checked against glibc's own fnmatch, which kmod uses), the manifest contract."""

from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from module_db.alias_match import AliasIndex, glob_to_regex, literal_prefix
from module_db.contract import MANIFEST_PATH, VERSION, ImageManifest, PackedModule
from module_db.errors import ModuleDbError
from module_db.index_files import (
    AliasLine,
    SoftDep,
    parse_builtin_modinfo,
    parse_modules_alias,
    parse_modules_builtin,
    parse_modules_dep,
    parse_softdeps,
    parse_weakdeps,
)
from module_db.kernel_modules import KernelModules
from module_db.load import load_kernel_modules
from module_db.names import name_from_path, normalize_alias, normalize_name

_LIBC = ctypes.CDLL(None)
_LIBC.fnmatch.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
_LIBC.fnmatch.restype = ctypes.c_int


def glibc_fnmatch(pattern: str, text: str) -> bool:
    """glibc's fnmatch(pattern, text, 0): exactly what kmod calls for alias patterns."""
    return int(_LIBC.fnmatch(pattern.encode(), text.encode(), 0)) == 0


def ours(pattern: str, text: str) -> bool:
    return re.match(glob_to_regex(pattern), text) is not None


# -- parsers: errors name the file and the line ----------------------------------------


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (parse_modules_dep, "# c\nkernel/a.ko:\n\nno colon here\n",
         "F:4: expected 'module.ko: deps...': 'no colon here'"),
        (parse_modules_dep, "kernel/a.ko: kernel/b.txt\n",
         "F:1: not a kernel module path: 'kernel/b.txt': 'kernel/a.ko: kernel/b.txt'"),
        (parse_modules_dep, ": kernel/a.ko\n", "F:1: expected 'module.ko: deps...': ': kernel/a.ko'"),
        (parse_modules_alias, "alias pci:v* e1000\nalias only-two\n",
         "F:2: expected 'alias PATTERN MODULE': 'alias only-two'"),
        (parse_modules_alias, "options e1000 x=1\n",
         "F:1: expected 'alias PATTERN MODULE': 'options e1000 x=1'"),
        (parse_softdeps, "softdep a pre: b\nsoftdep\n",
         "F:2: expected 'softdep MODULE pre: ... post: ...': 'softdep'"),
        (parse_weakdeps, "weakdep a b\nweakdep a\n", "F:2: expected 'weakdep MODULE DEP': 'weakdep a'"),
        (parse_modules_builtin, "kernel/fs/ext4/ext4.ko\nkernel/fs/README\n",
         "F:2: expected a module path: 'kernel/fs/README'"),
    ],
)
def test_parser_errors_name_file_and_line(parse: object, text: str, expected: str) -> None:
    assert callable(parse)
    with pytest.raises(ModuleDbError) as info:
        parse(text, "F")
    assert str(info.value) == expected


def test_error_quotes_at_most_120_characters_of_the_line() -> None:
    with pytest.raises(ModuleDbError) as info:
        parse_modules_dep("x" * 500 + "\n", "modules.dep")
    assert str(info.value) == f"modules.dep:1: expected 'module.ko: deps...': '{'x' * 120}'"
    assert (info.value.path, info.value.line_no) == ("modules.dep", 1)


def test_builtin_modinfo_records() -> None:
    data = b"ext4.alias=fs-ext4\0ext4.license=GPL\0crc32c-generic.alias=crypto-crc32c\0\0"
    info = parse_builtin_modinfo(data, "F")
    assert info.names == {"ext4", "crc32c_generic"}
    assert info.aliases == (AliasLine("fs_ext4", "ext4"), AliasLine("crypto_crc32c", "crc32c_generic"))
    with pytest.raises(ModuleDbError, match=r"^F: expected 'module.key=value': 'garbage'$"):
        parse_builtin_modinfo(b"ext4.alias=fs-ext4\0garbage\0", "F")


def test_names_are_normalised_once_at_parse_time() -> None:
    deps = parse_modules_dep("kernel/net/hv-netvsc.ko.xz: kernel/a/dep-x.ko.zst kernel/b/y.ko.gz\n")
    entry = deps["hv_netvsc"]
    assert (entry.path, entry.deps) == ("kernel/net/hv-netvsc.ko.xz", ("dep_x", "y"))
    aliases = parse_modules_alias("alias fs-ext4 ext-4\nalias pci:v*d*[a-b]* x\nalias bad[ y\n")
    assert aliases == [AliasLine("fs_ext4", "ext_4"), AliasLine("pci:v*d*[a-b]*", "x")]  # 'bad[' skipped
    assert name_from_path("kernel/drivers/net/e1000/e1000.ko") == "e1000"
    with pytest.raises(ValueError, match="not a kernel module path"):
        name_from_path("kernel/foo.o")


# -- softdeps --------------------------------------------------------------------------

SOFTDEP_TEXT = """\
softdep btrfs pre: blake2b-256
softdep btrfs pre: sha256 post: crc32c
softdep odd ignored words pre: a post: b pre: c
"""


def _softdep_kernel() -> KernelModules:
    deps = parse_modules_dep(
        "kernel/fs/btrfs.ko: kernel/lib/xor.ko kernel/lib/raid6.ko\n"
        "kernel/lib/raid6.ko:\nkernel/lib/xor.ko:\n"
        "kernel/crypto/blake2b_generic.ko:\nkernel/crypto/sha256_generic.ko:\n"
        "kernel/crypto/crc32c_generic.ko:\n"
        "kernel/odd.ko:\nkernel/a.ko:\nkernel/b.ko:\nkernel/c.ko:\n"
    )
    aliases = parse_modules_alias(
        "alias blake2b-256 blake2b_generic\nalias sha256 sha256_generic\nalias crc32c crc32c_generic\n"
    )
    return KernelModules("test", deps, tuple(aliases), softdeps=parse_softdeps(SOFTDEP_TEXT))


def test_softdep_lines_are_kept_in_order() -> None:
    soft = parse_softdeps(SOFTDEP_TEXT)
    assert soft["btrfs"] == (SoftDep(("blake2b-256",), ()), SoftDep(("sha256",), ("crc32c",)))
    assert soft["odd"] == (SoftDep(("a", "c"), ("b",)),)  # words before 'pre:' are ignored


def test_kmod_honours_the_first_softdep_line_the_image_carries_all() -> None:
    km = _softdep_kernel()
    assert km.softdep("btrfs") == SoftDep(("blake2b-256",), ())
    assert km.softdep("btrfs", kmod_compatible=False) == SoftDep(("blake2b-256", "sha256"), ("crc32c",))
    assert km.softdep("xor") == SoftDep()
    # libkmod's order: hard deps (reversed modules.dep), then pre softdeps, the module, post.
    assert km.load_order(["btrfs"]) == ["raid6", "xor", "blake2b_generic", "btrfs"]
    assert km.load_order(["btrfs"], kmod_compatible=False) == [
        "raid6", "xor", "blake2b_generic", "sha256_generic", "btrfs", "crc32c_generic"
    ]
    assert set(km.pack_closure(["btrfs"])) == {
        "raid6", "xor", "blake2b_generic", "sha256_generic", "btrfs", "crc32c_generic"
    }


def test_weakdeps_are_packed_not_loaded() -> None:
    km = _softdep_kernel()
    km.weakdeps = parse_weakdeps("weakdep odd sha256\n")
    assert km.load_order(["odd"]) == ["a", "c", "odd", "b"]
    assert km.pack_closure(["odd"]) == ["a", "c", "odd", "b", "sha256_generic"]


# -- alias normalisation and matching --------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("acpi*:PNP-0A03:*", "acpi*:PNP_0A03:*"),
        ("a-b[x-z]-c", "a_b[x-z]_c"),  # '-' inside brackets is a range, kept
        ("pci:v*d*sv*sd*bc01sc[0-9]i*", "pci:v*d*sv*sd*bc01sc[0-9]i*"),
        ("[a-]-[!-]", "[a-]_[!-]"),
        ("", ""),
        ("a]", None),
        ("a[b", None),
        ("[]]", None),  # kmod's bracket ends at the first ']'
    ],
)
def test_normalize_alias(alias: str, expected: str | None) -> None:
    assert normalize_alias(alias) == expected


def test_normalize_name() -> None:
    assert normalize_name("hv-netvsc") == "hv_netvsc"
    assert normalize_name("snd_hda-intel") == "snd_hda_intel"


GLOB_CASES = [
    ("[!x]", "y", True), ("[!x]", "x", False), ("[^x]", "y", True), ("[^x]", "x", False),
    ("[a-c]", "b", True), ("[a-c]", "d", False), ("[c-a]", "b", False), ("[!c-a]", "b", True),
    ("[a-cx-z]", "y", True), ("[a-]", "-", True), ("[]a]", "]", True), ("[!]a]", "]", False),
    ("\\*", "*", True), ("\\*", "a", False), ("\\a", "a", True), ("a\\", "a\\", False),
    ("[\\]]", "]", True), ("[?-\\]]", "\\", True), ("[a\\-z]", "b", False), ("[a\\-z]", "-", True),
    ("*", "a/b", True), ("a*c", "a/b/c", True), ("?", "/", True), ("*", "", True), ("?", "", False),
    ("*", "a\nb", True), ("a*", "A", False), ("[", "[", True), ("a[b", "a[b", True),
    (".*", "ab", False), ("a+", "aa", False), ("(a)|b", "(a)|b", True), ("a{2}", "a{2}", True),
    ("[[:digit:]]", "5", True), ("[[:digit:]]", "a", False), ("[[:alpha:]_]", "_", True),
    ("[[:b]", ":", True), ("[[:b]", "b", True), ("[![:digit:]]", "7", False),
    ("usb:v0BDAp8153d*dc*dsc*dp*icFFisc*ip*in*", "usb:v0BDAp8153d3000dcFFdsc00dp00icFFisc00ip00in00", True),
]


@pytest.mark.parametrize(("pattern", "text", "expected"), GLOB_CASES)
def test_glob_to_regex_edge_cases(pattern: str, text: str, expected: bool) -> None:
    assert glibc_fnmatch(pattern, text) == expected  # the table itself is glibc's behaviour
    assert ours(pattern, text) == expected


# Characters that make fnmatch interesting; ':' is left out (see the report on '[[:foo:]]').
PATTERN_CHARS = "ab_-[]!^\\*?/"
TEXT_CHARS = "ab_-[]!^\\/"


def _strings(chars: str, max_size: int) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(chars), max_size=max_size).map("".join)


@settings(max_examples=600, deadline=None, database=None)
@given(_strings(PATTERN_CHARS, 8), _strings(TEXT_CHARS, 6))
def test_glob_to_regex_agrees_with_glibc(raw: str, text: str) -> None:
    # kmod only matches patterns alias_normalize() accepted (and rewrote), as our parser does.
    pattern = normalize_alias(raw)
    if pattern is None:
        return
    assert ours(pattern, text) == glibc_fnmatch(pattern, text), glob_to_regex(pattern)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(st.tuples(_strings(PATTERN_CHARS, 7), st.sampled_from(["m1", "m2", "m3", "m4"])),
             max_size=25),
    st.lists(_strings(TEXT_CHARS, 6), min_size=1, max_size=8),
)
def test_prefix_index_equals_a_linear_fnmatch_scan(raw: list[tuple[str, str]], queries: list[str]) -> None:
    lines = [AliasLine(p, m) for p, m in ((normalize_alias(p), m) for p, m in raw) if p is not None]
    index = AliasIndex(lines)
    assert index.pattern_count == len(lines)
    for query in queries:
        wanted = normalize_alias(query)
        linear = () if wanted is None else tuple(
            dict.fromkeys(line.module for line in lines if glibc_fnmatch(line.pattern, wanted))
        )
        assert index.match(query) == linear, (query, lines)


def test_literal_prefix() -> None:
    assert literal_prefix("pci:v00008086d*") == "pci:v00008086d"
    assert literal_prefix("fs_ext4") == "fs_ext4"
    assert literal_prefix("a\\*b") == "a"
    assert literal_prefix("[ab]c") == ""


def test_resolve_prefers_module_then_alias_then_builtin() -> None:
    deps = parse_modules_dep("kernel/e1000.ko:\nkernel/crc32c_intel.ko:\n")
    aliases = parse_modules_alias("alias pci:v00008086d0000100E* e1000\nalias crc32c crc32c_intel\n")
    builtin = parse_builtin_modinfo(b"crc32c_generic.alias=crc32c\0unix.alias=net-pf-1\0")
    km = KernelModules("t", deps, tuple(aliases), builtin=builtin.names, builtin_aliases=builtin.aliases)
    assert km.resolve("e1000") == ("e1000",)
    assert km.resolve("pci:v00008086d0000100Esv0bc02") == ("e1000",)
    assert km.resolve("crc32c") == ("crc32c_intel",)  # a module's alias beats a built-in's
    assert km.resolve("unix") == ("unix",)
    assert km.resolve("net-pf-1") == ("unix",)
    assert km.resolve("nothing") == ()
    assert km.resolve("bad]") == ()
    assert km.is_builtin("unix") and not km.is_builtin("e1000")


# -- loading a modules directory -------------------------------------------------------


def test_load_kernel_modules_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModuleDbError, match=r"modules\.dep: missing; run depmod"):
        load_kernel_modules(tmp_path)
    (tmp_path / "modules.dep").write_text("kernel/e1000.ko:\n")
    (tmp_path / "modules.alias").write_text("# Aliases extracted from modules themselves.\nalias\n")
    with pytest.raises(ModuleDbError) as info:
        load_kernel_modules(tmp_path)
    assert str(info.value) == f"{tmp_path / 'modules.alias'}:2: expected 'alias PATTERN MODULE': 'alias'"
    (tmp_path / "modules.alias").write_text("alias pci:v00008086d0000100E* e1000\n")
    (tmp_path / "modules.builtin").write_text("kernel/net/unix/unix.ko\n")
    (tmp_path / "modules.builtin.modinfo").write_bytes(b"unix.alias=net-pf-1\0")
    km = load_kernel_modules(tmp_path, "6.9.9")
    assert (km.version, km.builtin, km.resolve("net-pf-1")) == ("6.9.9", frozenset({"unix"}), ("unix",))


# -- the manifest contract -------------------------------------------------------------


def _manifest() -> ImageManifest:
    return ImageManifest(
        kernel="6.1.0-56-amd64",
        modules={
            "e1000": PackedModule("e1000", "kernel/e1000.ko", (), reason="class:nic", module_class="nic"),
            "btrfs": PackedModule("btrfs", "kernel/btrfs.ko", ("xor",), softdep_pre=("crc32c",),
                                  softdep_post=("zz",), weakdeps=("w",), module_class="fs",
                                  reason="class:fs", firmware=("a/b.bin",)),
            "xor": PackedModule("xor", "kernel/xor.ko", (), reason="dep:btrfs"),
            "crc32c_generic": PackedModule("crc32c_generic", "kernel/crc32c_generic.ko", ()),
        },
        aliases=(AliasLine("pci:v00008086d0000100E*", "e1000"), AliasLine("crc32c", "crc32c_generic")),
        builtin=frozenset({"unix", "ext4"}),
        builtin_aliases=(AliasLine("net_pf_1", "unix"),),
        firmware_present=("a/b.bin",),
        firmware_missing=("c/d.bin",),
        boot={"settle_ms": 500, "extra": [1, "two"]},
    )


def test_manifest_round_trips() -> None:
    manifest = _manifest()
    text = manifest.to_json()
    again = ImageManifest.from_json(text)
    assert again == manifest
    assert again.to_json() == text  # canonical: sorted keys, stable layout
    km = again.kernel_modules()
    assert km.load_order(["btrfs"]) == ["xor", "crc32c_generic", "btrfs"]
    assert km.resolve("pci:v00008086d0000100Esv1") == ("e1000",)
    assert km.resolve("net-pf-1") == ("unix",)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.update(version=VERSION + 1),
         f"manifest version {VERSION + 1}, this code reads {VERSION}"),
        (lambda d: d.pop("version"), f"manifest version None, this code reads {VERSION}"),
        (lambda d: d.update(schema="something/else"), "not an initrd-composer/image document"),
        (lambda d: d.pop("aliases"), "malformed manifest: KeyError('aliases')"),
        (lambda d: d["modules"]["xor"].pop("path"), "malformed manifest: KeyError('path')"),
    ],
    ids=["newer", "unversioned", "schema", "no-aliases", "module-without-path"],
)
def test_manifest_refuses_what_it_cannot_read(edit: object, expected: str) -> None:
    doc = json.loads(_manifest().to_json())
    assert callable(edit)
    edit(doc)
    with pytest.raises(ModuleDbError) as info:
        ImageManifest.from_json(json.dumps(doc), "img:" + MANIFEST_PATH)
    assert str(info.value) == f"img:{MANIFEST_PATH}: {expected}"


def test_manifest_that_is_not_json() -> None:
    with pytest.raises(ModuleDbError, match=r"^src: not valid JSON: "):
        ImageManifest.from_json("{not json", "src")
    with pytest.raises(ModuleDbError, match=r"^src: not an initrd-composer/image document$"):
        ImageManifest.from_json("[1, 2]", "src")
