"""Shared-library closure of ELF binaries, resolved the way glibc's ld.so would, inside `root`.

We read PT_INTERP and the dynamic section with pyelftools instead of running ldd: ldd executes
the binary (unsafe for a sysroot, impossible for a foreign one) and reports host paths only.
Every lookup happens under `root`; absolute symlinks are followed relative to it, and each
symlink met on the way (merged-/usr top-level links, soname links, alternatives) becomes a
symlink entry so that paths inside the image match the host.
"""

from __future__ import annotations

import functools
import glob
import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from initrd_composer.errors import ComposeError
from initrd_composer.image.entries import Entry, dir_entry, file_entry, symlink_entry

# glibc's compiled-in trusted directories on Debian amd64, searched after ld.so.cache.
DEFAULT_LIBRARY_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)
# Debian 12 is merged-/usr: these are symlinks into usr/ and binaries' paths go through them
MERGED_USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_MAX_SYMLINKS = 40  # the kernel's own limit on nested symlinks (ELOOP)


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic loader cares about in one ELF file."""

    elfclass: int
    machine: str
    elf_type: str
    interp: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    soname: str | None


_ELF_CACHE: dict[tuple[str, int, int], ElfInfo] = {}


def read_elf_info(host_path: Path) -> ElfInfo:
    """Parse (and cache per path/size/mtime) the loader-relevant parts of an ELF file."""
    try:
        st = host_path.stat()
    except OSError as exc:
        raise ComposeError(f"{host_path}: cannot read: {exc.strerror}") from exc
    key = (str(host_path), st.st_size, st.st_mtime_ns)
    cached = _ELF_CACHE.get(key)
    if cached is None:
        cached = _parse_elf(host_path)
        _ELF_CACHE[key] = cached
    return cached


def is_elf(host_path: Path) -> bool:
    try:
        with host_path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def _parse_elf(host_path: Path) -> ElfInfo:
    if not is_elf(host_path):
        raise ComposeError(
            f"{host_path}: not an ELF file", "only ELF executables and libraries can be resolved"
        )
    try:
        with host_path.open("rb") as fh:
            elf = ELFFile(fh)
            interp: str | None = None
            needed: list[str] = []
            rpath: list[str] = []
            runpath: list[str] = []
            soname: str | None = None
            for seg in elf.iter_segments():
                ptype = seg["p_type"]
                if ptype == "PT_INTERP" and isinstance(seg, InterpSegment):
                    interp = seg.get_interp_name()
                elif ptype == "PT_DYNAMIC" and isinstance(seg, DynamicSegment):
                    for tag in seg.iter_tags():
                        dtag = tag.entry.d_tag
                        if dtag == "DT_NEEDED":
                            needed.append(_tag_text(tag, "needed"))
                        elif dtag == "DT_RPATH":
                            rpath.extend(p for p in _tag_text(tag, "rpath").split(":") if p)
                        elif dtag == "DT_RUNPATH":
                            runpath.extend(p for p in _tag_text(tag, "runpath").split(":") if p)
                        elif dtag == "DT_SONAME":
                            soname = _tag_text(tag, "soname")
            return ElfInfo(
                elfclass=elf.elfclass,
                machine=elf["e_machine"],
                elf_type=elf["e_type"],
                interp=interp,
                needed=tuple(needed),
                rpath=tuple(rpath),
                runpath=tuple(runpath),
                soname=soname,
            )
    except (ELFError, ValueError, KeyError, OSError) as exc:
        raise ComposeError(f"{host_path}: malformed ELF file: {exc}") from exc


def _tag_text(tag: object, attribute: str) -> str:
    # pyelftools attaches the decoded string of DT_NEEDED & co. as a dynamic attribute.
    return str(getattr(tag, attribute))


@dataclass(frozen=True)
class Resolved:
    """An image path after following symlinks inside the root."""

    path: str  # canonical, no leading slash, every component a real directory or file
    links: tuple[tuple[str, str], ...]  # (symlink path, its target text) in the order met
    exists: bool


class RootFS:
    """Path resolution confined to `root`, as a chroot would see it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._memo: dict[str, Resolved] = {}

    def host(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def resolve(self, image_path: str) -> Resolved:
        memo = self._memo.get(image_path)
        if memo is None:
            memo = self._resolve(image_path)
            self._memo[image_path] = memo
        return memo

    def _resolve(self, image_path: str) -> Resolved:
        pending = [c for c in image_path.split("/") if c][::-1]  # a stack, next component last
        current: list[str] = []
        links: list[tuple[str, str]] = []
        hops = 0
        while pending:
            comp = pending.pop()
            if comp == ".":
                continue
            if comp == "..":
                if current:
                    current.pop()
                continue
            candidate = "/".join([*current, comp])
            host = self.root / candidate
            try:
                st = host.lstat()
            except OSError:
                rest = [*current, comp, *pending[::-1]]
                return Resolved("/".join(rest), tuple(links), exists=False)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise ComposeError(f"{host}: too many levels of symbolic links")
                target = os.readlink(host)
                links.append((candidate, target))
                if target.startswith("/"):
                    current = []
                pending.extend([c for c in target.split("/") if c][::-1])
            else:
                current.append(comp)
        return Resolved("/".join(current), tuple(links), exists=True)


def ld_so_conf_dirs(root: Path, conf: str = "/etc/ld.so.conf") -> list[str]:
    """Library directories from ld.so.conf and its `include` globs, read under root, in order."""
    dirs: list[str] = []
    seen_files: set[Path] = set()

    def read(path: Path) -> None:
        if path in seen_files or not path.is_file():
            return
        seen_files.add(path)
        for raw in path.read_text(errors="replace").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include") and line[7:8] in (" ", "\t"):
                for pattern in line[8:].split():
                    # a relative include is relative to the including file's directory
                    base = root if pattern.startswith("/") else path.parent
                    for match in sorted(glob.glob(str(base / pattern.lstrip("/")))):
                        read(Path(match))
            elif line.startswith("hwcap"):
                continue  # obsolete directive, ignored by modern ldconfig too
            else:
                # "dir=type" is a legacy per-directory library type; only the path counts.
                dirs.extend(d.split("=", 1)[0] for d in line.replace(",", " ").split())

    read(root / conf.lstrip("/"))
    return list(dict.fromkeys(d.rstrip("/") or "/" for d in dirs))


@dataclass
class ElfClosure:
    """Result of a closure walk: image entries plus the libraries found, for ld.so.cache."""

    entries: list[Entry] = field(default_factory=list)
    libraries: list[tuple[str, str]] = field(default_factory=list)  # (soname, image path)


@dataclass(frozen=True)
class _Pending:
    image_path: str  # the path it was reached through (DT_NEEDED name resolved, or a root)
    requester: str
    loaders: tuple[tuple[str, ElfInfo], ...]  # (origin dir, info) of objects up the load chain


class _Walker:
    def __init__(self, root: Path) -> None:
        self.fs = RootFS(root)
        self.entries: dict[str, Entry] = {}
        self.libraries: dict[str, str] = {}
        self.done: set[str] = set()

    @functools.cached_property
    def search_dirs(self) -> list[str]:
        return [*ld_so_conf_dirs(self.fs.root), *DEFAULT_LIBRARY_DIRS]

    def add_path(self, image_path: str, origin: str) -> Resolved:
        """Add the symlinks met on the way to image_path, its parents and the file itself."""
        res = self.fs.resolve(image_path)
        if not res.exists:
            raise ComposeError(f"{self.fs.host(image_path)}: no such file under {self.fs.root}")
        for link, target in res.links:
            self._add(symlink_entry(link, target, origin=origin))
        host = self.fs.host(res.path)
        if not host.is_file():
            raise ComposeError(f"{host}: not a regular file")
        self._add(file_entry(res.path, host, origin=origin))
        return res

    def _add(self, entry: Entry) -> None:
        _add_entry(self.entries, entry)

    def walk(self, roots: Iterable[str], origin: str) -> None:
        queue = deque(_Pending(p, origin, ()) for p in roots)
        while queue:
            item = queue.popleft()
            res = self.add_path(item.image_path, item.requester)
            if res.path in self.done:
                continue
            self.done.add(res.path)
            info = read_elf_info(self.fs.host(res.path))
            if info.soname:  # a library: remember where its soname lives, for ld.so.cache
                soname = info.soname
                soname_path = res.path.rsplit("/", 1)[0] + "/" + soname
                if self.fs.resolve(soname_path).path != res.path:
                    soname_path = res.path
                self.libraries.setdefault(soname, "/" + soname_path)
            # ld.so takes $ORIGIN of the executable from /proc/self/exe (fully resolved) and of
            # a library from the path it was found under; the resolved dir serves for both.
            me = ("/" + res.path.rsplit("/", 1)[0] if "/" in res.path else "/", info)
            chain = (me, *item.loaders)
            why = f"needed by /{res.path}"
            if info.interp:
                queue.append(_Pending(info.interp, why, chain))
            for name in info.needed:
                found = self.find_library(name, info, chain, res.path)
                queue.append(_Pending(found, why, chain))

    def find_library(self, name: str, info: ElfInfo, chain: tuple[tuple[str, ElfInfo], ...], who: str) -> str:
        if "/" in name:
            return name
        found = self.search(name, self._search_order(info, chain), info)
        if found is None:
            raise ComposeError(
                f"{self.fs.host(who)}: needed library {name} not found under {self.fs.root}",
                "install the package that ships it, or add its directory to ld.so.conf",
            )
        return found

    def search(self, name: str, dirs: Iterable[str], like: ElfInfo | None) -> str | None:
        """First dir/name that is an ELF file of the same class and machine as `like`."""
        for directory in dirs:
            candidate = f"{directory.rstrip('/')}/{name}"
            res = self.fs.resolve(candidate)
            host = self.fs.host(res.path)
            if not res.exists or not host.is_file() or not is_elf(host):
                continue
            lib = read_elf_info(host)
            if like is None or (lib.elfclass, lib.machine) == (like.elfclass, like.machine):
                return candidate
        return None

    def _search_order(self, info: ElfInfo, chain: tuple[tuple[str, ElfInfo], ...]) -> Iterator[str]:
        # glibc: DT_RPATH of the object and of its loaders (unless they have DT_RUNPATH),
        # ignored entirely when the object has DT_RUNPATH; then DT_RUNPATH; then the cache
        # (ld.so.conf) and the trusted directories.
        if not info.runpath:
            for origin_dir, obj in chain:
                if not obj.runpath:
                    yield from (_expand_origin(p, origin_dir) for p in obj.rpath)
        yield from (_expand_origin(p, chain[0][0]) for p in info.runpath)
        yield from self.search_dirs


def _expand_origin(path: str, origin_dir: str) -> str:
    for token in ("${ORIGIN}", "$ORIGIN"):
        path = path.replace(token, origin_dir)
    return path


def _add_entry(entries: dict[str, Entry], entry: Entry) -> None:
    for parent in _parents(entry.path):
        existing = entries.setdefault(parent, dir_entry(parent))
        if existing.kind != "dir":
            raise ComposeError(
                f"image path /{parent} is wanted twice, differently: {existing.kind} "
                f"({existing.origin}) and directory (parent of /{entry.path}, {entry.origin})"
            )
    previous = entries.setdefault(entry.path, entry)
    if previous.kind == "dir" and entry.kind == "dir":
        return
    if _content(previous) != _content(entry):
        raise ComposeError(
            f"image path /{entry.path} is wanted twice, differently: "
            f"{previous.kind} ({previous.origin}) and {entry.kind} ({entry.origin})"
        )


def _content(entry: Entry) -> tuple[object, ...]:
    return (entry.kind, entry.mode, entry.source, entry.data, entry.target, entry.rdev)


def merge_entries(*groups: Iterable[Entry]) -> list[Entry]:
    """One sorted list without duplicates, with every parent directory present.

    The same path twice is fine when both entries say the same thing (the first `origin`
    wins); a real conflict raises ComposeError.
    """
    merged: dict[str, Entry] = {}
    for group in groups:
        for entry in group:
            _add_entry(merged, entry)
    return [merged[p] for p in sorted(merged)]


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def resolve_elf_closure(
    paths: Iterable[str], root: Path = Path("/"), origin: str = "requested"
) -> ElfClosure:
    """Walk the closure of the given image paths (e.g. "/usr/bin/mdadm") inside root."""
    walker = _Walker(root)
    walker.walk(sorted(set(paths)), origin)
    for entry in merged_usr_entries(root):
        walker._add(entry)
    return ElfClosure(
        entries=[walker.entries[p] for p in sorted(walker.entries)],
        libraries=sorted(walker.libraries.items()),
    )


def merged_usr_entries(root: Path = Path("/")) -> list[Entry]:
    """The top-level merged-/usr symlinks root has (bin -> usr/bin, ...), with their targets'
    directories, so /bin/sh, /sbin/ldconfig and /lib64/ld-linux-x86-64.so.2 keep working."""
    fs = RootFS(root)
    entries: list[Entry] = []
    for name in MERGED_USR_LINKS:
        host = root / name
        if not host.is_symlink():
            continue
        res = fs.resolve(name)
        if not res.exists or not fs.host(res.path).is_dir():
            continue  # dangling (e.g. lib32 without multilib): nothing to keep working
        entries.append(symlink_entry(name, os.readlink(host), origin="merged /usr layout"))
        entries.append(dir_entry(res.path))
    return entries


def elf_closure(paths: Iterable[str], root: Path = Path("/")) -> list[Entry]:
    """Entries (files, symlink chains, parent dirs) for the binaries and all their libraries."""
    return resolve_elf_closure(paths, root).entries


def library_sonames(paths: Iterable[str], root: Path = Path("/")) -> list[tuple[str, str]]:
    """(soname, absolute image path) of every shared library the binaries load."""
    return resolve_elf_closure(paths, root).libraries


def path_entries(image_paths: Iterable[str], root: Path = Path("/"), origin: str = "") -> list[Entry]:
    """Entries for plain files (ELF or not, no closure) with their symlink chains and parents."""
    walker = _Walker(root)
    for path in sorted(set(image_paths)):
        walker.add_path(path, origin)
    return [walker.entries[p] for p in sorted(walker.entries)]


def locate_library(name: str, root: Path = Path("/")) -> str:
    """Image path under which ld.so would find library `name` (e.g. for dlopen'ed ones)."""
    walker = _Walker(root)
    found = walker.search(name, walker.search_dirs, None)
    if found is None:
        raise ComposeError(f"library {name} not found under {root}", "install the package that ships it")
    return found


def cache_pairs_for_entries(entries: Iterable[Entry]) -> list[tuple[str, str]]:
    """(soname, image path) of every shared library among `entries`, as ldconfig would list.

    Like ldconfig, only files named lib*.so* or ld-*.so* count. The path recorded is the
    soname link next to the file when the entries carry one, else the file itself.
    """
    by_path = {e.path: e for e in entries}
    pairs: dict[str, str] = {}
    for entry in sorted(by_path.values(), key=lambda e: e.path):
        base = entry.path.rsplit("/", 1)[-1]
        if entry.kind != "file" or ".so" not in base or not base.startswith(("lib", "ld-")):
            continue
        host = entry.source if entry.source is not None else None
        if host is None or not is_elf(host):
            continue
        info = read_elf_info(host)
        if info.elf_type != "ET_DYN" or not info.soname:
            continue
        directory = entry.path.rsplit("/", 1)[0] if "/" in entry.path else ""
        link = f"{directory}/{info.soname}" if directory else info.soname
        chosen = link if _points_to(by_path, link, entry.path) else entry.path
        pairs.setdefault(info.soname, "/" + chosen)
    return sorted(pairs.items())


def _points_to(by_path: dict[str, Entry], link: str, target_path: str) -> bool:
    """Whether image path `link` is target_path or a same-directory symlink chain to it."""
    seen = 0
    current = link
    while seen < _MAX_SYMLINKS:
        if current == target_path:
            return True
        entry = by_path.get(current)
        if entry is None or entry.kind != "symlink":
            return False
        if entry.target.startswith("/"):
            current = entry.target.lstrip("/")
        else:
            parent = current.rsplit("/", 1)[0] if "/" in current else ""
            current = os.path.normpath(f"{parent}/{entry.target}" if parent else entry.target)
        seen += 1
    return False
