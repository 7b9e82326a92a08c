"""The fixed parts of every image: skeleton files, the /init launcher, merged-/usr paths."""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Iterable
from pathlib import Path

from initrd_composer.build.elf_closure import merge_entries
from initrd_composer.build.python_runtime import BOOT_PYTHON_DIR
from initrd_composer.image.entries import Entry, data_entry, dir_entry

# Mount points and scratch directories /init expects before anything is mounted.
EMPTY_DIRS = ("proc", "sys", "dev", "run", "tmp", "mnt", "root", "var/tmp", "var/log", "etc/modprobe.d")


def skeleton_root() -> Path:
    """skeleton/rootfs in a source checkout, or the copy installed as package data."""
    in_tree = Path(__file__).resolve().parent.parent / "skeleton" / "rootfs"
    if in_tree.is_dir():
        return in_tree
    return Path(str(importlib.resources.files("initrd_composer.skeleton") / "rootfs"))


def skeleton_entries(root: Path | None = None) -> list[Entry]:
    base = root or skeleton_root()
    entries: list[Entry] = [dir_entry(d, 0o1777 if d in ("tmp", "var/tmp") else 0o755) for d in EMPTY_DIRS]
    for path in sorted(base.rglob("*")):
        if path.is_file() and path.name != ".keep":
            rel = str(path.relative_to(base))
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            entries.append(data_entry(rel, path.read_bytes(), mode=mode, origin="skeleton"))
    return entries


def init_script(python_image_path: str) -> bytes:
    """/init: start the boot side; if even importing it fails, keep PID 1 alive in a shell.

    -I ignores PYTHON* variables the kernel may pass; -S skips site (faster, no
    site-packages to find): the boot packages are put on sys.path explicitly.
    """
    return f"""#!{python_image_path} -IS
# initrd-composer /init (PID 1): hands over to initrd_composer.boot.init.
import sys
sys.path.insert(0, {BOOT_PYTHON_DIR!r})
try:
    from initrd_composer.boot.init import main
except BaseException as exc:  # PID 1 must never exit: fall back to a shell
    import os
    print("initrd-composer: cannot start the boot side:", repr(exc), flush=True)
    os.execv("/bin/sh", ["sh", "-i"])
main()
""".encode()


def shell_command_script(python_image_path: str, module: str) -> bytes:
    """A command for the rescue shell that runs `module.main()` with the boot packages (such as
    `nuke`, which starts a restore over after a failure)."""
    return f"""#!{python_image_path} -IS
# initrd-composer: runs {module}.main() (the boot side, as /init does).
import sys
sys.path.insert(0, {BOOT_PYTHON_DIR!r})
from {module} import main
sys.exit(main())
""".encode()


# Commands of the rescue shell: image path -> the boot-side module whose main() they run.
# (`nuke` in the shell is a function of /etc/profile that runs initrd-composer-nuke.)
SHELL_COMMANDS = {
    "usr/sbin/initrd-composer-nuke": "initrd_composer.boot.restore.again",
    "usr/sbin/initrd-composer-restore": "initrd_composer.boot.restore.step_command",
}


def canonical_paths(entries: Iterable[Entry]) -> list[Entry]:
    """Rewrite paths that go through a top-level symlink of the image (merged /usr:
    lib -> usr/lib), so no entry is placed 'inside' a symlink."""
    items = list(entries)
    links = {e.path: e.target.strip("/") for e in items if e.kind == "symlink" and "/" not in e.path}
    if not links:
        return merge_entries(items)
    out: list[Entry] = []
    for e in items:
        top, sep, rest = e.path.partition("/")
        if sep and top in links and not links[top].startswith(".."):
            out.append(dataclasses.replace(e, path=f"{links[top]}/{rest}"))
        else:
            out.append(e)
    return merge_entries(out)
