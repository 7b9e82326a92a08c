"""Boot-side Python runtime: package discovery, import analysis under Debian's python3.11,
unchecked-hash pycs, the disk cache, and the planned entries."""

from __future__ import annotations

import importlib.util
import marshal
import re
import struct
import time
from pathlib import Path

import pytest

from initrd_composer.build import module_files, python_runtime
from initrd_composer.build.python_runtime import (
    BOOT_PYTHON_DIR,
    analyse_imports,
    compile_pycs,
    find_boot_packages,
    plan_python_runtime,
)
from initrd_composer.errors import ComposeError
from initrd_composer.image.entries import Entry
from initrd_composer.runner import run

TARGET = Path("/usr/bin/python3.11")


def test_boot_packages_layout() -> None:
    files = {f.relpath: f for f in find_boot_packages(python_runtime.DEFAULT_BOOT_PACKAGES)}
    assert files["initrd_composer/__init__.py"].module == "initrd_composer"
    assert files["initrd_composer/boot/__init__.py"].module == "initrd_composer.boot"
    assert not any(
        r.startswith("initrd_composer/") and r.count("/") == 1 and not r.endswith("__init__.py")
        for r in files
    )  # no host-side module
    assert files["pyudev/core.py"].module == "pyudev.core"
    assert files["pyudev/device/_device.py"].module == "pyudev.device._device"
    assert "pyudev/glib.py" not in files and "pyudev/pyqt5.py" not in files
    assert files["libarchive/ffi.py"].package == "libarchive"
    assert files["module_db/__init__.py"].module == "module_db"
    assert all("__pycache__" not in r for r in files)


def _fake_package(tmp_path: Path, name: str, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = tmp_path / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_compiled_extension_and_missing_package_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_package(tmp_path, "fakecext", {"__init__.py": "", "fast.cpython-311-x86_64-linux-gnu.so": ""})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ComposeError, match="compiled extension"):
        find_boot_packages(["fakecext"])
    with pytest.raises(ComposeError, match="not importable"):
        find_boot_packages(["no_such_boot_package_xyz"])


def test_analysis_follows_package_code_fully_but_stdlib_only_at_module_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_package(
        tmp_path,
        "fakeboot",
        {
            "__init__.py": "import shutil\n",
            "stage.py": "def later():\n    import csv\n    return csv\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    files = find_boot_packages(["fakeboot"])
    analysis = analyse_imports(TARGET, files, cache_dir=tmp_path / "cache")
    mods = analysis.modules
    assert mods["fakeboot.stage"] == str(tmp_path / "fakeboot/stage.py")
    assert mods["shutil"] == "/usr/lib/python3.11/shutil.py"
    assert "csv" in mods and "_csv" in mods  # a function-level import in boot code counts
    assert "tarfile" not in mods  # shutil imports it only inside make_archive helpers
    assert "argparse" not in mods
    assert "encodings.utf_8" in mods and "encodings.idna" in mods
    assert any(name.startswith("_sysconfigdata_") for name in mods)
    assert analysis.cache_tag == "cpython-311"


def test_host_only_and_missing_imports_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # elftools lives next to pyudev in the build's site-packages: visible, but not packed
    _fake_package(tmp_path, "fakestray", {"__init__.py": "import elftools\n"})
    _fake_package(tmp_path, "fakemissing", {"__init__.py": "import no_such_mod_q\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    cache = tmp_path / "cache"
    with pytest.raises(ComposeError, match="outside the stdlib and the boot packages: elftools"):
        plan_python_runtime(["fakestray", "pyudev"], cache_dir=cache)
    with pytest.raises(ComposeError, match=r"no_such_mod_q \(imported by fakemissing\)"):
        plan_python_runtime(["fakemissing"], cache_dir=cache)
    files = find_boot_packages(["fakemissing"])
    analysis = analyse_imports(TARGET, files, cache_dir=cache, optional=["no_such_mod_q"])
    assert "fakemissing" in analysis.modules


def test_pyc_is_unchecked_hash_for_the_target_with_image_filename(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text("X = 1\n")
    out = compile_pycs(TARGET, [(src, "/usr/lib/x/mod.py")], tmp_path / "c")["/usr/lib/x/mod.py"]
    data = out.read_bytes()
    magic = run(
        [
            TARGET,
            "-I",
            "-S",
            "-c",
            "import sys, importlib.util; sys.stdout.buffer.write(importlib.util.MAGIC_NUMBER)",
        ]
    ).stdout
    assert data[:4] == magic
    assert struct.unpack_from("<I", data, 4)[0] == 0b01  # hash-based, check_source off
    if importlib.util.MAGIC_NUMBER == magic:
        code = marshal.loads(data[16:])
        assert code.co_filename == "/usr/lib/x/mod.py"
    # cached: a second call compiles nothing even when the interpreter is unavailable
    again = compile_pycs(TARGET, [(src, "/usr/lib/x/mod.py")], tmp_path / "c")
    assert again["/usr/lib/x/mod.py"] == out
    src.write_text("X = 2\n")
    changed = compile_pycs(TARGET, [(src, "/usr/lib/x/mod.py")], tmp_path / "c")
    assert changed["/usr/lib/x/mod.py"] != out


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Entry], Path, float]:
    cache = tmp_path_factory.mktemp("pycache")
    start = time.perf_counter()
    entries = plan_python_runtime(cache_dir=cache)
    return entries, cache, time.perf_counter() - start


def _by_path(entries: list[Entry]) -> dict[str, Entry]:
    return {e.path: e for e in entries}


def test_runtime_entries(planned: tuple[list[Entry], Path, float]) -> None:
    entries = _by_path(planned[0])
    assert entries["usr/bin/python3"].target == "python3.11"
    assert entries["usr/bin/python3.11"].kind == "file"
    assert entries["usr/lib/python3.11/os.py"].kind == "file"
    assert entries["usr/lib/python3.11/__pycache__/os.cpython-311.pyc"].kind == "file"
    assert "usr/lib/python3.11/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so" in entries
    assert entries["usr/lib/x86_64-linux-gnu/libffi.so.8"].kind == "symlink"  # _ctypes' libffi
    assert entries["usr/lib/x86_64-linux-gnu/libudev.so.1"].kind == "symlink"
    assert entries["usr/lib/x86_64-linux-gnu/libarchive.so.13"].kind == "symlink"
    assert "usr/lib/python3.11/argparse.py" not in entries
    # OpenSSL's sha256 for the restore's verification (libcrypto is packed for _ssl anyway)
    assert "usr/lib/python3.11/lib-dynload/_hashlib.cpython-311-x86_64-linux-gnu.so" in entries
    boot = BOOT_PYTHON_DIR.lstrip("/")
    assert entries[f"{boot}/pyudev/core.py"].kind == "file"
    assert entries[f"{boot}/pyudev/__pycache__/core.cpython-311.pyc"].kind == "file"
    assert entries[f"{boot}/initrd_composer/__init__.py"].kind == "file"
    assert f"{boot}/initrd_composer/runner.py" not in entries
    # every .py has its pyc, and every pyc its .py
    pys = {p for p in entries if p.endswith(".py")}
    pycs = {p for p in entries if p.endswith(".pyc")}
    assert {re.sub(r"__pycache__/([^/]+)\.cpython-311\.pyc$", r"\1.py", p) for p in pycs} == pys
    # sorted, unique, with parents as directories
    paths = [e.path for e in planned[0]]
    assert paths == sorted(set(paths))
    for entry in planned[0]:
        parent = entry.path.rpartition("/")[0]
        assert not parent or entries[parent].kind == "dir", entry.path


def test_ld_so_cache_lists_dlopened_libraries(
    planned: tuple[list[Entry], Path, float], tmp_path: Path
) -> None:
    cache = _by_path(planned[0])["etc/ld.so.cache"]
    assert cache.data is not None
    (tmp_path / "c").write_bytes(cache.data)
    out = run(["ldconfig", "-C", tmp_path / "c", "-p"], env={"LC_ALL": "C"}).stdout.decode()
    listed = dict(re.findall(r"^\t(\S+) \(libc6,x86-64\) => (\S+)$", out, re.M))
    assert listed["libudev.so.1"] == "/usr/lib/x86_64-linux-gnu/libudev.so.1"
    assert listed["libarchive.so.13"] == "/usr/lib/x86_64-linux-gnu/libarchive.so.13"
    assert listed["libffi.so.8"] == "/usr/lib/x86_64-linux-gnu/libffi.so.8"
    assert "libc.so.6" in listed


def test_warm_plan_is_identical_and_runs_no_subprocess(
    planned: tuple[list[Entry], Path, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    entries, cache, cold = planned

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"unexpected subprocess {args}")

    monkeypatch.setattr(python_runtime, "run", no_run)
    start = time.perf_counter()
    again = plan_python_runtime(cache_dir=cache)
    warm = time.perf_counter() - start
    assert again == entries
    assert warm < max(cold, 0.5)
    size = sum(len(e.data) if e.data is not None else _size(e.source) for e in entries if e.kind == "file")
    stdlib = [e for e in entries if e.path.startswith("usr/lib/python3.11/") and e.path.endswith(".py")]
    print(
        f"python runtime: {len(entries)} entries, {size} bytes, {len(stdlib)} stdlib .py, "
        f"cold {cold:.2f}s warm {warm:.3f}s"
    )


def _size(path: Path | None) -> int:
    assert path is not None
    return path.stat().st_size


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert module_files.default_cache_dir() == tmp_path / "initrd-composer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert module_files.default_cache_dir() == Path.home() / ".cache/initrd-composer"
