"""Import discipline of what runs inside the image: the boot side (initrd_composer.boot, and
initrd_composer.capture, which the `capture` boot mode runs) imports only the standard
library, pyudev, libarchive-c, module_db and those two; module_db only the standard library
and itself. Checked statically (every import statement, lazy ones too) and by importing."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from initrd_composer.runner import run

REPO = Path(__file__).resolve().parent.parent
BOOT = REPO / "initrd_composer" / "boot"
CAPTURE = REPO / "initrd_composer" / "capture"
PACKED = (BOOT, CAPTURE)  # the initrd_composer packages the image carries
MODULE_DB = REPO / "module_db"
BOOT_THIRD_PARTY = {"pyudev", "libarchive", "module_db"}


def package_of(path: Path, root: Path = REPO) -> str:
    """The package a file belongs to (for __init__.py: its own), for relative imports."""
    return ".".join(path.relative_to(root).parts[:-1])


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in a file, lazy ones included;
    `from P import x` gives both P and P.x, since x may be a submodule."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            out.append((node.lineno, module))
            out.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and _called_name(node.func) in ("__import__", "import_module"):
            arg = node.args[0] if node.args else None
            name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "<dynamic>"
            out.append((node.lineno, name))
    return out


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def _is_stdlib(module: str) -> bool:
    # _sysconfigdata_*: the stdlib's build-time configuration, named after the platform
    top = module.partition(".")[0]
    return top in sys.stdlib_module_names or module == "__future__" or top.startswith("_sysconfigdata_")


def boot_import_allowed(module: str) -> bool:
    """The stdlib, the boot side's three libraries, the boot package, and the (import-free)
    initrd_composer package itself; never one of the host side's modules."""
    if _is_stdlib(module) or module.partition(".")[0] in BOOT_THIRD_PARTY:
        return True
    if module in ("initrd_composer", "initrd_composer.boot", "initrd_composer.capture"):
        return True
    return module.startswith(("initrd_composer.boot.", "initrd_composer.capture."))


def _files(base: Path) -> list[Path]:
    files = sorted(base.rglob("*.py"))
    assert files, f"no Python files under {base}"
    return files


@pytest.mark.parametrize("path", [f for base in PACKED for f in _files(base)], ids=lambda p: p.name)
def test_boot_side_imports_only_what_the_image_carries(path: Path) -> None:
    imports = imported_modules(path, package_of(path))
    bad = [f"{path.name}:{line}: {module}" for line, module in imports if not boot_import_allowed(module)]
    assert bad == []


@pytest.mark.parametrize("path", _files(MODULE_DB), ids=lambda p: p.name)
def test_module_db_imports_only_the_standard_library(path: Path) -> None:
    bad = [
        f"{path.name}:{line}: {module}"
        for line, module in imported_modules(path, package_of(path))
        if not (_is_stdlib(module) or module.partition(".")[0] == "module_db")
    ]
    assert bad == []


def test_the_package_init_imports_nothing() -> None:
    """initrd_composer/__init__.py runs inside the image before any boot module."""
    init = REPO / "initrd_composer" / "__init__.py"
    assert imported_modules(init, package_of(init)) == []


def test_the_checker_sees_what_it_must_reject(tmp_path: Path) -> None:
    pkg = tmp_path / "initrd_composer" / "boot"
    pkg.mkdir(parents=True)
    sample = pkg / "sample.py"
    sample.write_text(
        "import os\nfrom initrd_composer import cli\nfrom .. import compose\nfrom . import console\n"
        "from .console import log\nimport elftools.elf\n"
        "def f():\n    import zstandard\n    __import__('rich')\n"
    )
    assert package_of(sample, tmp_path) == "initrd_composer.boot"
    found = [m for _line, m in imported_modules(sample, package_of(sample, tmp_path))]
    assert found == [
        "os", "initrd_composer", "initrd_composer.cli", "initrd_composer", "initrd_composer.compose",
        "initrd_composer.boot", "initrd_composer.boot.console", "initrd_composer.boot.console",
        "initrd_composer.boot.console.log", "elftools.elf", "zstandard", "rich",
    ]
    assert [m for m in found if not boot_import_allowed(m)] == [
        "initrd_composer.cli", "initrd_composer.compose", "elftools.elf", "zstandard", "rich"
    ]
    assert package_of(pkg / "__init__.py", tmp_path) == "initrd_composer.boot"


def test_importing_the_boot_side_loads_no_host_module(tmp_path: Path) -> None:
    """The same at run time, transitively: import every packed module in a fresh interpreter
    without site-packages (-S), as in the image. What the image carries besides the stdlib is
    offered through a directory of links to those packages only (pyudev, libarchive), so an
    import of anything else installed here fails as it would at boot."""
    names = sorted(
        ".".join((*p.relative_to(REPO).parent.parts, p.stem))
        for base in PACKED
        for p in base.rglob("*.py")
        if p.stem != "__init__"
    )
    assert {"initrd_composer.boot.init", "initrd_composer.capture.set_writer"} <= set(names)
    import libarchive  # noqa: PLC0415 - only to find where it is installed
    import pyudev  # noqa: PLC0415

    for module in (libarchive, pyudev):
        (tmp_path / module.__name__).symlink_to(Path(str(module.__file__)).parent)
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(tmp_path)!r}]\n"
        f"for name in {names!r}:\n"
        "    __import__(name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = run([sys.executable, "-S", "-E", "-c", code], cwd=REPO).stdout.decode().split()
    assert set(names) <= set(loaded)
    outside = [m for m in loaded if m != "__main__" and not boot_import_allowed(m)]
    assert outside == []
