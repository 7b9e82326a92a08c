"""Restore tools + busybox planning, materialize(), and the whole runtime proven in a chroot."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from initrd_composer.build.elf_closure import RootFS, merge_entries
from initrd_composer.build.python_runtime import plan_python_runtime
from initrd_composer.build.tools_runtime import (
    applet_entries,
    list_busybox_applets,
    plan_tools_runtime,
)
from initrd_composer.errors import ComposeError
from initrd_composer.image.entries import (
    Entry,
    chardev_entry,
    data_entry,
    dir_entry,
    symlink_entry,
)
from initrd_composer.image.materialize import materialize
from initrd_composer.runner import run


def _by_path(entries: list[Entry]) -> dict[str, Entry]:
    return {e.path: e for e in entries}


def test_applets_follow_the_roots_layout(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/sbin").mkdir(parents=True)
    os.symlink("usr/bin", tmp_path / "bin")
    os.symlink("usr/sbin", tmp_path / "sbin")
    applets = ["bin/ash", "sbin/init", "linuxrc", "usr/bin/wc", "sbin/mkfs.vfat", "bin/busybox"]
    entries = applet_entries(applets, "/usr/bin/busybox", RootFS(tmp_path), {"usr/sbin/mkfs.vfat"})
    assert entries == [
        symlink_entry("usr/bin/ash", "/usr/bin/busybox", origin="busybox applet ash"),
        symlink_entry("usr/bin/wc", "/usr/bin/busybox", origin="busybox applet wc"),
    ]


def test_missing_tools_warn_but_busybox_is_required(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="busybox not found"):
        plan_tools_runtime(root=tmp_path)
    (tmp_path / "usr/bin").mkdir(parents=True)
    os.symlink("usr/bin", tmp_path / "bin")
    shutil.copy2("/bin/busybox", tmp_path / "usr/bin/busybox")
    result = plan_tools_runtime(["mdadm", "no-such-tool"], root=tmp_path)
    assert [w.split(":")[0] for w in result.warnings] == ["mdadm", "no-such-tool"]
    entries = _by_path(result.entries)
    assert entries["bin"].target == "usr/bin"
    assert entries["usr/bin/busybox"].source == tmp_path / "usr/bin/busybox"
    assert entries["usr/bin/sh"].target == "/usr/bin/busybox"


def test_host_tools_runtime() -> None:
    result = plan_tools_runtime()
    assert result.warnings == []
    entries = _by_path(result.entries)
    assert entries["usr/bin/busybox"].kind == "file"
    assert entries["sbin"].target == "usr/sbin" and entries["bin"].target == "usr/bin"
    assert entries["usr/sbin/mdadm"].kind == "file"
    assert entries["usr/sbin/lvm"].kind == "file"
    assert entries["usr/sbin/vgchange"].target == "lvm"
    assert entries["usr/sbin/mkfs.ext4"].target == "mke2fs"
    assert entries["usr/sbin/mkfs.vfat"].target == "mkfs.fat"  # dosfstools, not the applet
    assert entries["usr/sbin/ldconfig"].kind == "file"
    assert entries["usr/bin/mt"].target == "/etc/alternatives/mt"
    assert entries["etc/alternatives/mt"].target.endswith("mt-st")
    for name in ("sfdisk", "mkfs.xfs", "mkfs.btrfs", "mke2fs"):
        assert entries[f"usr/sbin/{name}"].kind == "file", name
    applets = [e for e in result.entries if e.target == "/usr/bin/busybox"]
    assert len(applets) > 200
    assert len(applets) < len(list_busybox_applets(Path("/bin/busybox")))
    assert "linuxrc" not in entries and "usr/sbin/init" not in entries
    paths = [e.path for e in result.entries]
    assert paths == sorted(set(paths))
    for entry in result.entries:
        parent = entry.path.rpartition("/")[0]
        assert not parent or entries[parent].kind == "dir", entry.path


def test_materialize_writes_every_kind(tmp_path: Path) -> None:
    entries = [
        dir_entry("etc", 0o750),
        data_entry("etc/motd", b"hi\n", 0o600),
        symlink_entry("etc/link", "motd"),
        chardev_entry("dev/null", 1, 3, 0o666),
    ]
    skipped = materialize(entries, tmp_path)
    assert (tmp_path / "etc/motd").read_bytes() == b"hi\n"
    assert (tmp_path / "etc/motd").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "etc").stat().st_mode & 0o777 == 0o750
    assert os.readlink(tmp_path / "etc/link") == "motd"
    if os.geteuid() == 0:
        assert skipped == [] and (tmp_path / "dev/null").is_char_device()
    else:
        assert skipped == [entries[3]]
    # idempotent over an existing tree
    assert materialize(entries, tmp_path) == skipped


def test_materialize_never_writes_outside_dest(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    with pytest.raises(ComposeError, match="outside"):
        materialize([symlink_entry("esc", str(outside)), data_entry("esc/x", b"")], dest)
    assert not (outside / "x").exists()


@pytest.fixture(scope="module")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("runtime")
    start = time.perf_counter()
    tools = plan_tools_runtime()
    python = plan_python_runtime(cache_covers=tools.entries, cache_dir=dest.parent / "pyc-cache")
    # devtmpfs provides /dev/null at boot; subprocess (ldconfig -p) needs it in the chroot
    entries = merge_entries(tools.entries, python, [chardev_entry("dev/null", 1, 3, 0o666)])
    planned = time.perf_counter() - start
    materialize(entries, dest)
    print(f"runtime: {len(entries)} entries planned in {planned:.2f}s")
    return dest


def _chroot(directory: Path, *argv: str) -> tuple[int, str]:
    chroot = shutil.which("chroot")
    assert chroot is not None
    proc = run([chroot, directory, *argv], check=False, env={"LC_ALL": "C"}, timeout=60)
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


@pytest.mark.root
def test_python_runtime_works_in_chroot(runtime_dir: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, '/usr/lib/initrd-composer/python'); "
        "import pyudev, libarchive, module_db, initrd_composer.boot; pyudev.Context(); "
        "import ctypes.util; "
        "assert ctypes.util.find_library('archive') == 'libarchive.so.13'; "
        "assert ctypes.util.find_library('udev') == 'libudev.so.1'; "
        "assert pyudev.__cached__.endswith('.pyc'); print('python ok')"
    )
    rc, out = _chroot(runtime_dir, "/usr/bin/python3.11", "-IS", "-c", code)
    assert rc == 0, out
    assert "python ok" in out


@pytest.mark.root
def test_every_boot_module_imports_in_chroot(runtime_dir: Path) -> None:
    """Importing a module runs its stdlib imports at module level and in class bodies
    (email.message imports email.iterators in one): each boot module must import in the
    image's runtime, not only on the host."""
    code = (
        "import sys, os, importlib; top = '/usr/lib/initrd-composer/python'; sys.path.insert(0, top); "
        "names = [os.path.relpath(os.path.join(d, f), top)[:-3].replace('/', '.').removesuffix('.__init__') "
        "for d, _, fs in os.walk(top + '/initrd_composer/boot') for f in fs if f.endswith('.py')]; "
        "[importlib.import_module(n) for n in sorted(names)]; print('imported', len(names))"
    )
    rc, out = _chroot(runtime_dir, "/usr/bin/python3.11", "-IS", "-c", code)
    assert rc == 0, out
    assert int(out.split("imported")[1].split()[0]) >= 30, out


@pytest.mark.root
def test_python_uses_our_pycs_in_chroot(runtime_dir: Path) -> None:
    code = "import sys; sys.path.insert(0, '/usr/lib/initrd-composer/python'); import pyudev, subprocess"
    rc, out = _chroot(runtime_dir, "/usr/bin/python3", "-IS", "-v", "-c", code)
    assert rc == 0, out
    assert "code object from '/usr/lib/initrd-composer/python/pyudev/__pycache__/" in out
    assert "code object from '/usr/lib/python3.11/__pycache__/subprocess.cpython-311.pyc'" in out
    assert "bad magic number" not in out


# Each restore tool, asked for its version (mkfs.fat has no --version: its --help prints
# usage and the version and exits 0): the documented exit status and what it must print.
TOOL_VERSIONS: tuple[tuple[str, int, str], ...] = (
    ("mdadm --version", 0, r"^mdadm - v\d+\.\d+"),
    ("mke2fs -V", 0, r"^mke2fs \d+\.\d+"),
    ("mkfs.ext4 -V", 0, r"^mke2fs \d+\.\d+"),
    ("mkfs.xfs -V", 0, r"^mkfs\.xfs version \d+\.\d+"),
    ("mkfs.btrfs --version", 0, r"^mkfs\.btrfs, part of btrfs-progs v\d+\.\d+"),
    ("mkfs.vfat --help", 0, r"^mkfs\.fat \d+\.\d+"),
    ("sfdisk --version", 0, r"^sfdisk from util-linux \d+\.\d+"),
    ("lvm version", 0, r"^\s*LVM version:\s+\d+\.\d+"),
    ("mt --version", 0, r"^mt-st v\. \d+\.\d+"),
)


@pytest.mark.root
def test_busybox_and_tools_run_in_chroot(runtime_dir: Path) -> None:
    assert _chroot(runtime_dir, "/bin/busybox", "sh", "-c", "echo ok") == (0, "ok\n")
    rc, out = _chroot(runtime_dir, "/bin/sh", "-c", "ls /sbin/ldconfig && /sbin/ldconfig -p")
    assert rc == 0 and "libudev.so.1 (libc6,x86-64)" in out, out
    for command, status, banner in TOOL_VERSIONS:
        rc, out = _chroot(runtime_dir, "/bin/sh", "-c", command)
        assert "error while loading shared libraries" not in out, (command, out)
        assert f"{command.split()[0]}: not found" not in out, (command, out)
        assert rc == status, f"{command}: exit status {rc}, documented {status}:\n{out}"
        assert re.search(banner, out, re.MULTILINE), f"{command}: no {banner!r} in:\n{out}"
