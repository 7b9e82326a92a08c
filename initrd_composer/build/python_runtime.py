"""The boot-side Python runtime: interpreter, the stdlib modules it needs, boot packages, pycs.

The image runs Debian's interpreter (`python3.11 -IS`), not the one running this build, so
module analysis and bytecode compilation both run UNDER THE TARGET INTERPRETER: its stdlib,
its extension modules and its magic number are what count. Results are cached on disk
(${XDG_CACHE_HOME:-~/.cache}/initrd-composer) so a second build costs no subprocess.

Which stdlib modules: modulefinder from every boot-package module, following all imports in
the boot packages but only import-time ones inside the stdlib (module level and class
bodies; function-level imports there are lazy paths: argparse for a `main()`,
importlib.metadata, tarfile for shutil.make_archive, ...; following them triples the
runtime). Modules imported lazily or by computed name that the boot side relies on are listed in EXTRA_STDLIB.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from initrd_composer.build.elf_closure import (
    RootFS,
    cache_pairs_for_entries,
    locate_library,
    merge_entries,
    path_entries,
    resolve_elf_closure,
)
from initrd_composer.build.ldcache import build_ld_so_cache
from initrd_composer.build.module_files import default_cache_dir
from initrd_composer.errors import ComposeError
from initrd_composer.image.entries import Entry, data_entry, file_entry
from initrd_composer.runner import run

# Where the boot packages live in the image; /init (image_layout.init_script) puts it on sys.path.
BOOT_PYTHON_DIR = "/usr/lib/initrd-composer/python"
DEFAULT_PYTHON = Path("/usr/bin/python3")
# initrd_composer.capture: the `capture` boot mode writes a restore set from the rescue system.
DEFAULT_BOOT_PACKAGES = (
    "pyudev", "libarchive", "module_db", "initrd_composer.boot", "initrd_composer.capture",
)
# dlopen()ed through ctypes.util.find_library: pyudev -> libudev, libarchive-c -> libarchive
DEFAULT_DLOPEN_LIBRARIES = ("libudev.so.1", "libarchive.so.13")
# GUI toolkit bridges of pyudev: never importable in the image
SKIPPED_SUBMODULES = (
    "pyudev.glib",
    "pyudev.wx",
    "pyudev.pyqt5",
    "pyudev.pyside",
    "pyudev.pyside6",
    "pyudev._qt_base",
)
# Imported lazily or by computed name (codec lookups, time.strptime), so invisible to
# modulefinder yet needed: codecs for the console, filenames and IDNA host names.
EXTRA_STDLIB = (
    "encodings.utf_8",
    "encodings.utf_8_sig",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_16",
    "encodings.utf_16_le",
    "encodings.utf_16_be",
    "encodings.idna",
    "encodings.raw_unicode_escape",
    "encodings.unicode_escape",
    "_strptime",
)
# Nothing is left out by default. (_hashlib once was, for its libcrypto; but _ssl brings that
# anyway, and a restore hashes every byte it writes: OpenSSL's sha256 runs at several times
# the speed of hashlib's built-in fallback, which has no SHA extensions.)
DEFAULT_EXCLUDES: tuple[str, ...] = ()
LD_SO_CACHE = "etc/ld.so.cache"

# Runs under the target interpreter with -I -S. Reads a JSON request on stdin.
_ANALYSE = r"""
import sys
startup = sorted(sys.modules)
import ast, json, modulefinder, os, sysconfig, types
req = json.load(sys.stdin)
stdlib = os.path.dirname(os.__file__) + "/"

def _without_main(co, path):
    # a module's `if __name__ == "__main__":` block never runs on import (heapq's imports
    # doctest there, pickle's argparse)
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return co
    def is_main(node):
        t = node.test if isinstance(node, ast.If) else None
        return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
                and len(t.comparators) == 1 and isinstance(t.comparators[0], ast.Constant)
                and t.comparators[0].value == "__main__")
    if not any(is_main(n) for n in tree.body):
        return co
    tree.body = [n for n in tree.body if not is_main(n)]
    return compile(tree, path, "exec")

class Finder(modulefinder.ModuleFinder):
    def scan_code(self, co, m):
        if (m.__file__ or "").startswith(stdlib):
            if co is getattr(m, "__code__", None) and m.__file__.endswith(".py"):
                co = _without_main(co, m.__file__)
            # import-time imports only: hide functions (CO_OPTIMIZED) but keep class bodies,
            # which run on import (email.message imports email.iterators in one)
            co = co.replace(co_consts=tuple(
                None if isinstance(c, types.CodeType) and c.co_flags & 1 else c
                for c in co.co_consts))
        super().scan_code(co, m)

finder = Finder(path=req["path"] + sys.path, excludes=req["excludes"])
extras = list(req["extras"])
extras.append(sysconfig._get_sysconfigdata_name())
unimportable = []
for name in req["modules"] + startup + extras:
    try:
        finder.import_hook(name)
    except ImportError:
        if name in req["modules"]:
            unimportable.append(name)
print(json.dumps({
    "modules": {n: m.__file__ for n, m in finder.modules.items()},
    "unimportable": unimportable,
    "unresolved": {n: sorted(finder.badmodules[n]) for n in finder.any_missing_maybe()[0]},
    "stdlib": stdlib,
    "cache_tag": sys.implementation.cache_tag,
    "version": sys.version,
}))
"""

# Runs under the target interpreter: compile [source, in-image name, output] triples.
_COMPILE = r"""
import json, py_compile, sys
for source, dfile, out in json.load(sys.stdin):
    py_compile.compile(source, cfile=out, dfile=dfile, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


@dataclass(frozen=True)
class PackageFile:
    """A file of a boot package, found in the build process."""

    host: Path
    relpath: str  # below BOOT_PYTHON_DIR, e.g. "pyudev/core.py"
    module: str | None  # dotted module name for .py files
    package: str  # the import name it was requested under


def find_boot_packages(
    names: Sequence[str], skipped: Sequence[str] = SKIPPED_SUBMODULES
) -> list[PackageFile]:
    """Files of the named packages/modules as the build process imports them.

    A dotted name brings its parent packages' __init__.py only (initrd_composer.boot needs
    initrd_composer/__init__.py, not the host side). Compiled extensions are refused: the
    image's interpreter is not this one.
    """
    found: dict[str, PackageFile] = {}
    for name in names:
        spec = _find_spec(name)
        if spec.origin is None or not Path(spec.origin).is_file():
            raise ComposeError(f"boot package {name}: no source file", "install it as files")
        origin = Path(spec.origin)
        parts = name.split(".")
        is_package = spec.submodule_search_locations is not None
        base = origin.parents[len(parts) - (0 if is_package else 1)]
        for depth in range(1, len(parts)):  # parent packages: __init__ only
            init = base.joinpath(*parts[:depth], "__init__.py")
            if not init.is_file():
                raise ComposeError(f"boot package {name}: {init} missing")
            rel = init.relative_to(base).as_posix()
            found.setdefault(rel, PackageFile(init, rel, ".".join(parts[:depth]), name))
        files = sorted(_package_files(origin.parent)) if is_package else [origin]
        for path in files:
            rel = path.relative_to(base).as_posix()
            module = _module_name(rel) if path.suffix == ".py" else None
            if module is not None and _is_skipped(module, skipped):
                continue
            if path.suffix in (".so", ".pyd"):
                raise ComposeError(
                    f"boot package {name}: {path} is a compiled extension",
                    "only pure-Python packages can go into the image",
                )
            found.setdefault(rel, PackageFile(path, rel, module, name))
    return [found[k] for k in sorted(found)]


def _find_spec(name: str) -> importlib.machinery.ModuleSpec:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise ComposeError(f"boot package {name}: {exc}") from exc
    if spec is None:
        raise ComposeError(
            f"boot package {name} is not importable by the build",
            f"pip install the distribution that provides {name}",
        )
    return spec


def _package_files(directory: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for filename in filenames:
            if not filename.endswith((".pyc", ".pyo")):
                yield Path(dirpath) / filename


def _module_name(rel: str) -> str:
    dotted = rel[: -len(".py")].replace("/", ".")
    return dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted


def _is_skipped(module: str, skipped: Sequence[str]) -> bool:
    return any(module == s or module.startswith(s + ".") for s in skipped)


@dataclass(frozen=True)
class Analysis:
    modules: dict[str, str | None]  # module name -> host file (None for built-ins)
    stdlib: str  # host stdlib dir with trailing slash
    cache_tag: str


def _interpreter_id(host_python: Path) -> str:
    real = host_python.resolve()
    st = real.stat()
    return f"{real}:{st.st_size}:{st.st_mtime_ns}"


def analyse_imports(
    host_python: Path,
    files: Sequence[PackageFile],
    *,
    extras: Sequence[str] = EXTRA_STDLIB,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
    cache_dir: Path | None = None,
    optional: Sequence[str] = (),
) -> Analysis:
    """Run modulefinder under the target interpreter (cached on disk by inputs).

    A module the boot packages import that the target cannot find is an error unless
    listed in `optional` (for `try: import x except ImportError` fallbacks).
    """
    roots = sorted({str(f.host.parents[len(f.relpath.split("/")) - 1]) for f in files})
    request = {
        "path": roots,
        "modules": sorted(f.module for f in files if f.module is not None),
        "extras": list(extras),
        "excludes": list(excludes),
    }
    stamp = [(str(f.host), f.host.stat().st_size, f.host.stat().st_mtime_ns) for f in files]
    key = _digest(_ANALYSE, _interpreter_id(host_python), json.dumps([request, stamp]))
    cache = (cache_dir or default_cache_dir()) / "analysis" / f"{key}.json"
    try:
        result = json.loads(cache.read_text())
    except (OSError, ValueError):
        proc = run([host_python, "-I", "-S", "-c", _ANALYSE], input_bytes=json.dumps(request).encode())
        result = json.loads(proc.stdout)
        _write_atomic(cache, json.dumps(result, sort_keys=True).encode())
    if result["unimportable"]:
        raise ComposeError(f"{host_python} cannot import boot modules: {', '.join(result['unimportable'])}")
    ours = {f.module for f in files}
    unresolved = sorted(
        f"{name} (imported by {', '.join(c for c in callers if c in ours)})"
        for name, callers in result["unresolved"].items()
        if name not in optional and any(c in ours for c in callers)
    )
    if unresolved:
        raise ComposeError(
            f"boot-side imports not found for {host_python}: {'; '.join(unresolved)}",
            "install them, add their package to the boot packages, or list them as optional",
        )
    return Analysis(result["modules"], result["stdlib"], result["cache_tag"])


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def compile_pycs(
    host_python: Path, jobs: Sequence[tuple[Path, str]], cache_dir: Path | None = None
) -> dict[str, Path]:
    """Unchecked-hash .pyc files (PEP 552) for (host source, in-image path) pairs.

    Returns in-image path -> cached .pyc on the host. Cached by source bytes, in-image
    path (it is the co_filename) and interpreter, so only changed sources are recompiled.
    """
    interp = _interpreter_id(host_python)
    base = (cache_dir or default_cache_dir()) / "pyc" / _digest(interp)[:16]
    result: dict[str, Path] = {}
    todo: list[list[str]] = []
    for source, dfile in jobs:
        out = base / f"{_digest(source.read_bytes(), dfile)}.pyc"
        result[dfile] = out
        if not out.is_file():
            todo.append([str(source), dfile, str(out)])
    if todo:
        base.mkdir(parents=True, exist_ok=True)
        run([host_python, "-I", "-S", "-c", _COMPILE], input_bytes=json.dumps(todo).encode())
    return result


def _pyc_path(image_py: str, cache_tag: str) -> str:
    directory, filename = image_py.rsplit("/", 1)
    return f"{directory}/__pycache__/{filename[: -len('.py')]}.{cache_tag}.pyc"


def plan_python_runtime(
    packages: Sequence[str] = DEFAULT_BOOT_PACKAGES,
    python: Path = DEFAULT_PYTHON,
    root: Path = Path("/"),
    *,
    dlopen_libraries: Sequence[str] = DEFAULT_DLOPEN_LIBRARIES,
    extra_stdlib: Sequence[str] = EXTRA_STDLIB,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
    optional_imports: Sequence[str] = (),
    cache_covers: Iterable[Entry] = (),
    cache_dir: Path | None = None,
) -> list[Entry]:
    """Entries for the boot-side Python: interpreter + closure, the stdlib modules the boot
    packages import, the packages under BOOT_PYTHON_DIR, dlopen()ed libraries, .pyc files,
    and /etc/ld.so.cache covering these libraries plus those in `cache_covers`.
    """
    fs = RootFS(root)
    python_image = "/" + fs.resolve(str(python)).path
    host_python = fs.host(python_image)
    if not host_python.is_file():
        raise ComposeError(f"{host_python}: interpreter not found", "apt-get install python3")
    files = find_boot_packages(packages)
    analysis = analyse_imports(
        host_python,
        files,
        extras=extra_stdlib,
        excludes=excludes,
        cache_dir=cache_dir,
        optional=optional_imports,
    )

    stdlib_sources: list[str] = []
    extensions: list[str] = []
    for name, host_file in sorted(analysis.modules.items()):
        if host_file is None or not host_file.startswith(analysis.stdlib):
            continue  # built-in, or a boot-package module handled below
        image_path = _image_path(host_file, root)
        if host_file.endswith(".py"):
            stdlib_sources.append(image_path)
        elif host_file.endswith(".so"):
            extensions.append(image_path)
        else:
            raise ComposeError(f"stdlib module {name}: unexpected file {host_file}")
    _check_outside(analysis, files)

    binaries = [str(python), *extensions]  # as given: keeps the python3 -> python3.11 link
    binaries += [locate_library(lib, root) for lib in dlopen_libraries]
    closure = resolve_elf_closure(binaries, root, origin="boot-side python runtime")
    stdlib_entries = path_entries(stdlib_sources, root, origin="stdlib module of the boot side")

    package_entries = [
        file_entry(f"{BOOT_PYTHON_DIR}/{f.relpath}", f.host, origin=f"boot package {f.package}")
        for f in files
    ]
    jobs = [(fs.host(p), p) for p in stdlib_sources]
    jobs += [(f.host, f"{BOOT_PYTHON_DIR}/{f.relpath}") for f in files if f.relpath.endswith(".py")]
    pycs = compile_pycs(host_python, jobs, cache_dir)
    pyc_entries = [
        file_entry(_pyc_path(dfile, analysis.cache_tag), pyc, 0o644, origin=f"bytecode of {dfile}")
        for dfile, pyc in sorted(pycs.items())
    ]
    entries = merge_entries(closure.entries, stdlib_entries, package_entries, pyc_entries)
    return merge_entries(entries, [ld_so_cache_entry([*entries, *cache_covers])])


def ld_so_cache_entry(entries: Iterable[Entry]) -> Entry:
    """/etc/ld.so.cache listing every shared library among `entries`."""
    data = build_ld_so_cache(cache_pairs_for_entries(entries))
    return data_entry(LD_SO_CACHE, data, origin="ld.so.cache for the image's libraries")


def _image_path(host_file: str, root: Path) -> str:
    rel = os.path.relpath(host_file, root)
    if rel.startswith(".."):
        raise ComposeError(f"{host_file}: outside the root {root}")
    return "/" + rel


def _check_outside(analysis: Analysis, files: Sequence[PackageFile]) -> None:
    """Refuse modules found neither in the stdlib nor in the boot packages (a host-only
    dependency would be missing at boot)."""
    ours = {f.module for f in files}
    strays = sorted(
        name
        for name, host_file in analysis.modules.items()
        if host_file is not None and not host_file.startswith(analysis.stdlib) and name not in ours
    )
    if strays:
        raise ComposeError(
            f"boot-side code imports modules outside the stdlib and the boot packages: {', '.join(strays)}",
            "add them to the boot packages, or stop importing them at boot",
        )
