"""The shell and restore tools in the image: static busybox with its applets, plus the real
mdadm, lvm, sfdisk, mkfs.*, mt-st and ldconfig from the host with their ELF closures.

Real tools win over busybox applets of the same name (busybox's mkfs.vfat or mt are
subsets); a tool missing on the host is a warning, and busybox's applet, if any, remains.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from initrd_composer.build.elf_closure import RootFS, merge_entries, resolve_elf_closure
from initrd_composer.errors import ComposeError
from initrd_composer.image.entries import Entry, symlink_entry
from initrd_composer.runner import run

BUSYBOX = "/bin/busybox"
# ldconfig: ctypes.util.find_library runs `/sbin/ldconfig -p` (pyudev, libarchive-c).
RESTORE_TOOLS = (
    "mdadm",
    "lvm",
    "sfdisk",
    "mke2fs",
    "mkfs.ext4",
    "mkfs.xfs",
    "mkfs.btrfs",
    "mkfs.vfat",
    "mkswap",
    "wipefs",
    "mt",
    "mt-st",
    "ldconfig",
    # the layout capture (capture boot mode) and the restore read what these say
    "lsblk",
    "blkid",
    "dumpe2fs",
    "xfs_db",
)
TOOL_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# /init is the Python PID 1: never let busybox's init or linuxrc stand in for it; `nuke` is
# the rescue shell's restore command, not busybox's directory remover.
SKIPPED_APPLETS = ("linuxrc", "init", "nuke")

_APPLET_CACHE: dict[tuple[str, int, int], list[str]] = {}


@dataclass
class ToolsRuntime:
    entries: list[Entry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # tools not installed in root


def find_tool(name: str, root: Path = Path("/"), dirs: Sequence[str] = TOOL_DIRS) -> str | None:
    """Image path of the first `dirs/name` present under root (a symlink counts)."""
    for directory in dirs:
        candidate = f"{directory}/{name}"
        if os.path.lexists(root / candidate.lstrip("/")):
            return candidate
    return None


def list_busybox_applets(host_busybox: Path) -> list[str]:
    """`busybox --list-full`: applet paths such as "bin/ash" (cached per binary)."""
    st = host_busybox.stat()
    key = (str(host_busybox), st.st_size, st.st_mtime_ns)
    if key not in _APPLET_CACHE:
        out = run([host_busybox, "--list-full"]).stdout.decode()
        _APPLET_CACHE[key] = sorted({line.strip() for line in out.splitlines() if line.strip()})
    return _APPLET_CACHE[key]


def applet_entries(
    applets: Iterable[str],
    busybox_image: str,
    fs: RootFS,
    taken: set[str],
    skipped: Sequence[str] = SKIPPED_APPLETS,
) -> list[Entry]:
    """Symlinks to busybox for each applet, at the path the root's layout gives it.

    "bin/ash" lands in usr/bin/ash when root's /bin is a symlink to usr/bin (the merged
    /usr symlink itself is an entry, so a link *through* it would clash). Paths in `taken`
    (real tools) are left alone.
    """
    entries: dict[str, Entry] = {}
    for applet in applets:
        directory, _, name = applet.strip("/").rpartition("/")
        if name in skipped or applet.strip("/") in skipped:
            continue
        parent = fs.resolve(directory).path if directory else ""
        path = f"{parent}/{name}" if parent else name
        if path in taken or path == busybox_image.lstrip("/"):
            continue
        entries.setdefault(path, symlink_entry(path, busybox_image, origin=f"busybox applet {name}"))
    return [entries[p] for p in sorted(entries)]


def alias_index(fs: RootFS, dirs: Sequence[str] = TOOL_DIRS) -> dict[str, list[Entry]]:
    """Symlinks in the tool directories by the real file they resolve to (vgchange -> lvm),
    each as the chain of symlink entries that leads there."""
    index: dict[str, dict[str, Entry]] = {}
    for directory in dict.fromkeys(fs.resolve(d).path for d in dirs):
        try:
            scan = sorted(os.scandir(fs.host(directory)), key=lambda d: d.name)
        except OSError:
            continue
        for item in scan:
            if not item.is_symlink():
                continue
            res = fs.resolve(f"{directory}/{item.name}")
            if not res.exists:
                continue
            chain = index.setdefault(res.path, {})
            for link, target in res.links:
                chain.setdefault(link, symlink_entry(link, target, origin=f"alias of /{res.path}"))
    return {real: [links[p] for p in sorted(links)] for real, links in index.items()}


def plan_tools_runtime(
    tools: Sequence[str] = RESTORE_TOOLS,
    root: Path = Path("/"),
    busybox: str = BUSYBOX,
    skipped_applets: Sequence[str] = SKIPPED_APPLETS,
) -> ToolsRuntime:
    """busybox (required) + applet links + each installed tool with its closure and aliases."""
    fs = RootFS(root)
    bb = fs.resolve(busybox)
    if not bb.exists:
        raise ComposeError(f"{fs.host(busybox)}: busybox not found", "apt-get install busybox-static")
    warnings: list[str] = []
    found: list[str] = []
    for tool in tools:
        path = find_tool(tool, root)
        if path is None:
            warnings.append(f"{tool}: not installed under {root}; left out of the image")
        else:
            found.append(path)
    closure = resolve_elf_closure([busybox, *found], root, origin="restore tool")
    index = alias_index(fs)
    aliases: list[Entry] = []
    for path in found:
        aliases.extend(index.get(fs.resolve(path).path, []))
    tool_entries = merge_entries(closure.entries, aliases)
    taken = {e.path for e in tool_entries}
    applets = list_busybox_applets(fs.host(bb.path))
    bb_entries = applet_entries(applets, "/" + bb.path, fs, taken, skipped_applets)
    return ToolsRuntime(merge_entries(tool_entries, bb_entries), warnings)
