"""scripts/bench's capture and restore throughput: our restore set against GNU tar, same tree.

The tree (a real Debian 12 system: the root tarball tests/source_machine.py caches, else a
sample of this host's /etc, /boot and /usr/lib) goes onto a GPT disk image of three ext4
filesystems, mounted as the machine mounts them: /, /boot and /usr/lib/modules (the two
big ones about the same size, so the restore's parallelism has work to share). Captured by
`compose-initrd capture --root SRC` and by one `tar -c` of the same mounted tree (--zstd,
and -I 'zstd -T0'); restored by extract_and_verify() onto fresh filesystems (one child per
archive, then every file verified) and by `tar -x --zstd` onto equivalent ones, nested.
Every timed command runs with the page cache dropped, under GNU time (its tree's ru_maxrss
and CPU time), its tree's summed Pss sampled; the `sync` after it is timed apart. Runs
interleave ours and tar's; a smaller sample, measured once, shows whether memory grows with
the data. bench_restore_report renders the results. Run as a script (`restore SET DEST`)
this file is the restore child, printing its timings as JSON.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import median

from bench_common import MIB, log, ratio

from initrd_composer.boot.restore.extract_all import ExtractJob, extract_and_verify, failure_lines
from initrd_composer.boot.restore_set.location import SetDirectory
from initrd_composer.boot.restore_set.manifest import load_set
from initrd_composer.boot.restore_set.verify import compare_tree
from initrd_composer.errors import ComposeError
from initrd_composer.runner import run

TARBALLS = "/var/cache/initrd-composer/source-machine/root-*.tar"
HOST_DIRS = ("etc", "boot", "usr/lib")  # the sample of this host when there is no tarball
MOUNTS = ("", "boot", "usr/lib/modules")  # the machine's filesystems, relative to its root
HOST_BYTES = 800 * 10**6  # the host sample's size (the tarball is taken whole)
SMALL_BYTES = 100 * 10**6  # the second tree, for memory against data size
QUICK_BYTES = 50 * 10**6
SAMPLE_S = 0.05
TIME = "/usr/bin/time"  # GNU time (Debian's `time` package)
TIMEOUT_S = 1800.0
CAPTURES = ("ours-capture", "tar-c", "tar-c-T0")
RESTORES = ("ours-restore", "tar-x")
TAR_C = ["tar", "--create", "--format=posix", "--numeric-owner", "--acls", "--xattrs", "--sparse"]
# What a restore needs: owners, modes, ACLs and all xattrs (tar restores only user.* unless told).
TAR_X = ["tar", "--extract", "--same-owner", "--preserve-permissions", "--numeric-owner", "--acls",
         "--xattrs", "--xattrs-include=*"]  # fmt: skip
MKFS = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
_LISTED = ["--no-recursion", "--null", "--verbatim-files-from", "-T"]  # then the NUL-separated list
_ARCHIVED = re.compile(r"^capture: (\S+): \d+ files, .* in ([\d.]+) s$")
_CAPTURED = re.compile(r"^captured \d+ filesystems into .*, ([\d.]+) s, [\d.]+ MB/s$")


@dataclass(frozen=True)
class Member:
    """A tarball entry: its name as stored ("./usr/bin/ls"), a regular file's size."""

    name: str
    size: int = 0
    kind: str = "other"  # "file", "hardlink" (to `link`) or "other"
    link: str = ""


@dataclass(frozen=True)
class Filesystem:
    mountpoint: str  # "/", "/boot", "/usr/lib/modules"
    data_bytes: int  # regular files, apparent sizes, each inode once
    files: int
    entries: int

    @property
    def rel(self) -> str:
        return self.mountpoint.strip("/")

    @property
    def name(self) -> str:  # the archive name the capture gives it: root, boot, usr-lib-modules
        return self.rel.replace("/", "-") or "root"

    @property
    def size_mib(self) -> int:
        return 64 + math.ceil((self.data_bytes * 1.25 + self.entries * 4096) / MIB)

    @property
    def inodes(self) -> int:
        return 2 * self.entries + 4096


@dataclass(frozen=True)
class Run:
    tool: str  # a key of commands()
    seconds: float
    sync_seconds: float  # `sync` right after it
    max_rss_kib: int  # ru_maxrss (GNU time): the largest process of the tree
    peak_pss_kib: int  # the peak of the tree's summed Pss, sampled every SAMPLE_S
    cpu_seconds: float = 0.0  # user + system time of the whole tree (GNU time)
    output_bytes: int = 0  # archives written (captures)
    parts: Mapping[str, float] = field(default_factory=dict)  # ours: where the time went, seconds


@dataclass(frozen=True)
class TreeBench:
    label: str
    filesystems: tuple[Filesystem, ...]
    runs: tuple[Run, ...]
    tar_check: tuple[str, ...] = ()  # tar -x's tree against our manifest: the differences

    @property
    def data_bytes(self) -> int:
        return sum(f.data_bytes for f in self.filesystems)

    def of(self, tool: str) -> list[Run]:
        return [r for r in self.runs if r.tool == tool]

    def seconds(self, tool: str, *, sync: bool = False) -> float:
        return float(median(r.seconds + (r.sync_seconds if sync else 0.0) for r in self.of(tool)))

    def rate(self, tool: str, *, sync: bool = False) -> float:
        """MB/s of file data (10^6 bytes), from the median wall time."""
        return self.data_bytes / 1e6 / self.seconds(tool, sync=sync)

    def speed_ratio(self, ours: str, theirs: str, *, sync: bool = False) -> float:
        return ratio(self.rate(ours, sync=sync), self.rate(theirs, sync=sync))

    def part(self, tool: str, name: str) -> float:
        return float(median(r.parts.get(name, 0.0) for r in self.of(tool)))


@dataclass(frozen=True)
class RestoreSetBench:
    source: str  # where the tree came from
    commands: Mapping[str, str]  # tool -> the command, SRC/SET/ARCHIVE/DEST for the paths
    mkfs: str
    trees: tuple[TreeBench, ...]  # the measured tree first, then the smaller one (memory)

    @property
    def capture_ratio(self) -> float:
        return self.trees[0].speed_ratio("ours-capture", "tar-c")

    @property
    def restore_ratio(self) -> float:
        return self.trees[0].speed_ratio("ours-restore", "tar-x")


def commands() -> dict[str, str]:
    return {
        "ours-capture": "compose-initrd capture --root SRC -o SET",
        "tar-c": shlex.join([*TAR_C, "--zstd", "-f", "ARCHIVE", "-C", "SRC", "."]),
        "tar-c-T0": shlex.join([*TAR_C, "-I", "zstd -T0", "-f", "ARCHIVE", "-C", "SRC", "."]),
        "ours-restore": "extract_and_verify(ExtractJob(archive, SET/FILE, DEST/NAME) for each archive)",
        "tar-x": shlex.join([*TAR_X, "--zstd", "-f", "ARCHIVE", "-C", "DEST"]),
    }


def choose_members(members: Sequence[Member], cap: int | None) -> list[Member]:
    """Every directory, link and device, and regular files spread evenly over the tree up
    to `cap` bytes of data (None: all): a file is kept while the bytes kept stay within
    cap/total of the bytes seen so far. A hard link is kept when its target is."""
    total = sum(m.size for m in members if m.kind == "file")
    if cap is None or total <= cap:
        return list(members)
    kept, seen, names, out = 0, 0, set(), []
    for m in members:
        if m.kind == "file":
            seen += m.size
            if kept + m.size > cap * seen / total:
                continue
            kept += m.size
            names.add(m.name)
        elif m.kind == "hardlink" and m.link not in names:
            continue
        out.append(m)
    return out


def mount_of(name: str) -> str:
    """The entry's filesystem: the longest of MOUNTS its path lies under ("" for /)."""
    path = name.removeprefix("./").strip("/")
    under = [m for m in MOUNTS if m and (path == m or path.startswith(m + "/"))]
    return max(under, key=len, default="")


def plan_filesystems(members: Sequence[Member]) -> tuple[Filesystem, ...]:
    sums = {m: [0, 0, 0] for m in MOUNTS}  # data bytes, files, entries
    for m in members:
        s = sums[mount_of(m.name)]
        s[2] += 1
        if m.kind == "file":
            s[0] += m.size
            s[1] += 1
    return tuple(Filesystem("/" + rel, *sums[rel]) for rel in MOUNTS)


def read_members(tarball: Path) -> list[Member]:
    out = []
    with tarfile.open(tarball, "r:") as tf:
        for ti in tf:
            if ti.isreg():
                out.append(Member(ti.name, ti.size, "file"))
            else:
                out.append(Member(ti.name, 0, "hardlink" if ti.islnk() else "other", ti.linkname))
    return out


def host_tarball(work: Path, cap: int) -> Path:
    """No cached tarball: a tar of an even sample of `cap` bytes of this host's HOST_DIRS."""
    members = [Member(".", 0)]
    for top in HOST_DIRS:
        for dirpath, dirnames, filenames in os.walk(Path("/") / top):
            dirnames.sort()
            for name in [*sorted(filenames), *dirnames]:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                regular = stat.S_ISREG(st.st_mode)
                members.append(Member("." + full, st.st_size * regular, "file" if regular else "other"))
    chosen = choose_members(members, cap)
    listing = work / "host.list"
    listing.write_bytes(b"\0".join(os.fsencode(m.name) for m in chosen))
    tarball = work / "host.tar"
    run([*TAR_C, "-f", tarball, "-C", "/", *_LISTED, listing], timeout=TIMEOUT_S)
    return tarball


def _mkfs(target: Path | str, fs: Filesystem) -> None:
    run([*MKFS, "-N", str(fs.inodes), target], timeout=300)


@contextmanager
def source_machine(work: Path, tarball: Path, chosen: Sequence[Member] | None,
                   plan: Sequence[Filesystem]) -> Iterator[Path]:  # fmt: skip
    """The tree on a GPT disk image of len(plan) ext4 filesystems, mounted under work/source."""
    image, src = work / "source.img", work / "source"
    image.touch()
    os.truncate(image, (sum(fs.size_mib for fs in plan) + 2) * MIB)
    script = "label: gpt\n" + "".join(f"size={fs.size_mib}MiB, type=linux\n" for fs in plan)
    run(["sfdisk", "-q", image], input_bytes=script.encode())
    with ExitStack() as stack:
        stack.callback(image.unlink)
        loop = run(["losetup", "-f", "--show", image]).stdout.decode().strip()
        stack.callback(run, ["losetup", "-d", loop])
        run(["partx", "-a", loop])  # (losetup -P leaves no partition nodes on some hosts)
        stack.callback(run, ["partx", "-d", loop])
        for i, fs in enumerate(plan, 1):
            part = f"{loop}p{i}"
            _mkfs(part, fs)
            where = src / fs.rel
            where.mkdir(parents=True, exist_ok=True)
            run(["mount", part, where])
            stack.callback(run, ["umount", where])
            (where / "lost+found").rmdir()  # the source has none: not captured, not extracted
        argv: list[str | Path] = [*TAR_X, "-f", tarball, "-C", src]
        if chosen is not None:
            listing = work / "members.list"
            listing.write_bytes(b"\0".join(os.fsencode(m.name) for m in chosen))
            argv += [*_LISTED, listing]
        run(argv, timeout=TIMEOUT_S)
        os.sync()
        yield src


def tree_filesystems(src: Path) -> tuple[Filesystem, ...]:
    """What each mounted filesystem of the tree holds (mount points count in theirs)."""
    devices = {os.stat(src / rel).st_dev: rel for rel in MOUNTS}
    sums = {rel: [0, 0, 1 if rel == "" else 0] for rel in MOUNTS}
    inodes: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(src):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            s = sums[devices[st.st_dev]]
            s[2] += 1
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in inodes:
                inodes.add((st.st_dev, st.st_ino))
                s[0] += st.st_size
                s[1] += 1
    return tuple(Filesystem("/" + rel, *sums[rel]) for rel in MOUNTS)


@contextmanager
def fresh_filesystems(base: Path, plan: Sequence[Filesystem], *, nested: bool) -> Iterator[Path]:
    """Empty ext4 filesystems like the source's, loop-mounted: base/NAME each (ours), or
    nested under base/root as the machine mounts them (tar's). Removed afterwards."""
    base.mkdir()
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base)
        for fs in plan:
            image = base / f"{fs.name}.img"
            image.touch()
            os.truncate(image, fs.size_mib * MIB)
            _mkfs(image, fs)
            where = base / "root" / fs.rel if nested else base / fs.name
            where.mkdir(parents=True, exist_ok=True)
            run(["mount", "-o", "loop", image, where])
            stack.callback(run, ["umount", where])
        yield base / "root" if nested else base


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def tree_pss_kib(pid: int) -> int:
    """The summed Pss of the process and its descendants (gone ones count 0)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def timed(tool: str, argv: Sequence[str | Path], logs: Path) -> tuple[Run, str, str]:
    """Run argv cold (caches dropped) as a child: the Run, its stdout and stderr."""
    drop_caches()
    out_path, err_path, rss_path = (logs / f"{tool}.{ext}" for ext in ("out", "err", "rss"))
    peak = [0]
    done = threading.Event()
    # GNU time reports its child's ru_maxrss: a child of this process would start with this
    # process's high-water mark (exec keeps the larger of it and the new program's).
    timed_argv = [TIME, "-f", "%M %U %S", "-o", rss_path, "--", *argv]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen([os.fspath(a) for a in timed_argv], stdout=out, stderr=err)  # noqa: S603

        def sample() -> None:
            while not done.wait(SAMPLE_S):
                peak[0] = max(peak[0], tree_pss_kib(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        killer = threading.Timer(TIMEOUT_S, proc.kill)
        killer.start()
        proc.wait()
        seconds = time.monotonic() - start
        killer.cancel()
        done.set()
        sampler.join()
    synced = time.monotonic()
    os.sync()
    sync_seconds = time.monotonic() - synced
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise ComposeError(f"{tool} failed: {shlex.join(map(str, argv))}: {last}", f"see {err_path}")
    rss, user, system = rss_path.read_text().splitlines()[-1].split()  # after any exit status line
    cpu = round(float(user) + float(system), 2)
    return Run(tool, round(seconds, 3), round(sync_seconds, 3), int(rss), peak[0], cpu), stdout, stderr


def capture(tool: str, src: Path, work: Path, logs: Path) -> Run:
    if tool == "ours-capture":
        set_dir = work / "set"
        shutil.rmtree(set_dir, ignore_errors=True)
        argv: list[str | Path] = [sys.executable, "-m", "initrd_composer", "capture", "--root", src]
        argv += ["-o", set_dir]
        result, out, err = timed(tool, argv, logs)
        parts = {f"archive {m[1]}": float(m[2]) for m in map(_ARCHIVED.match, err.splitlines()) if m}
        archiving = [float(m[1]) for m in map(_CAPTURED.match, out.splitlines()) if m]
        if not parts or not archiving:
            raise ComposeError("the capture's log has no archive or summary lines", f"see {logs}")
        parts["the archives and their bind mounts, side by side"] = archiving[-1]
        parts["layout and the rest"] = max(result.seconds - archiving[-1], 0.0)
        size = sum(p.stat().st_size for p in set_dir.iterdir() if p.is_file())
        return replace(result, output_bytes=size, parts=parts)
    archive = work / f"{tool}.tar.zst"
    archive.unlink(missing_ok=True)
    compress = ["--zstd"] if tool == "tar-c" else ["-I", "zstd -T0"]
    result, _out, _err = timed(tool, [*TAR_C, *compress, "-f", archive, "-C", src, "."], logs)
    return replace(result, output_bytes=archive.stat().st_size)


def restore_ours(work: Path, plan: Sequence[Filesystem], logs: Path) -> Run:
    with fresh_filesystems(work / "ours-fs", plan, nested=False) as dest:
        argv: list[str | Path] = [sys.executable, Path(__file__).resolve(), "restore", work / "set", dest]
        result, out, _err = timed("ours-restore", argv, logs)
    return replace(result, parts=json.loads(out)["parts"])


def restore_tar(work: Path, plan: Sequence[Filesystem], logs: Path, *, check: bool) -> tuple[Run, list[str]]:
    """tar -x onto fresh filesystems; with `check`, its tree compared with our manifest."""
    differences: list[str] = []
    with fresh_filesystems(work / "tar-fs", plan, nested=True) as dest:
        argv: list[str | Path] = [*TAR_X, "--zstd", "-f", work / "tar-c.tar.zst", "-C", dest]
        result, _out, _err = timed("tar-x", argv, logs)
        if check:
            manifest = load_set(work / "set")
            for fs in plan:  # mount points left out: ours restores the directory under them
                inner = {o.rel.removeprefix(fs.rel).lstrip("/") for o in plan if o.rel.startswith(fs.rel)}
                found = compare_tree(dest / fs.rel, manifest.archive(fs.name))
                differences += [f"{fs.mountpoint}: {m.path}: {m.what}" for m in found if m.path not in inner]
    return result, differences


def measure_tree(work: Path, tarball: Path, members: Sequence[Member], *, cap: int | None, runs: int,
                 label: str, logs: Path) -> TreeBench:  # fmt: skip
    chosen = choose_members(members, cap)
    plan = plan_filesystems(chosen)
    done: list[Run] = []

    def note(r: Run, i: int, data: int) -> None:
        log(f"restore-set {label}, run {i + 1}: {r.tool} {r.seconds:.2f} s "
            f"({data / 1e6 / r.seconds:.0f} MB/s), sync {r.sync_seconds:.2f} s, "
            f"max RSS {r.max_rss_kib // 1024} MiB, tree Pss {r.peak_pss_kib // 1024} MiB")  # fmt: skip

    with source_machine(work, tarball, None if cap is None else chosen, plan) as src:
        filesystems = tree_filesystems(src)
        data = sum(f.data_bytes for f in filesystems)
        log(
            f"restore-set {label}: {data / 1e6:.0f} MB in {sum(f.files for f in filesystems)} files, "
            + ", ".join(f"{f.mountpoint} {f.data_bytes / 1e6:.0f} MB" for f in filesystems)
        )
        for i in range(runs):
            for tool in CAPTURES:
                done.append(capture(tool, src, work, logs))
                note(done[-1], i, data)
    differences: list[str] = []
    for i in range(runs):
        done.append(restore_ours(work, filesystems, logs))
        note(done[-1], i, data)
        result, found = restore_tar(work, filesystems, logs, check=i == runs - 1)
        done.append(result)
        note(result, i, data)
        differences += found
    return TreeBench(label, filesystems, tuple(done), tuple(differences))


def _clear(work: Path) -> None:
    """Remove the scratch directory, never through a mount still under it."""
    if not work.exists():
        return
    mounted = [ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()]
    if any(m == str(work) or m.startswith(f"{work}/") for m in mounted):
        raise ComposeError(f"something is still mounted under {work}", "unmount it, then rerun the bench")
    shutil.rmtree(work)


def measure_restore_set(work: Path, runs: int, *, quick: bool = False) -> RestoreSetBench:
    """`runs` captures and restores of the tree, ours and tar's interleaved (--quick: one,
    of a QUICK_BYTES sample), then one of a SMALL_BYTES sample for memory."""
    if os.geteuid() != 0:
        raise ComposeError("the restore-set stage mounts loop filesystems", "run scripts/bench as root")
    missing = [t for t in ("tar", "zstd", "mkfs.ext4", "sfdisk", "partx", TIME) if shutil.which(t) is None]
    if missing:
        raise ComposeError(f"restore-set needs {', '.join(missing)}", "apt-get install time zstd fdisk")
    _clear(work)
    logs = work.with_name(work.name + "-logs")
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    work.mkdir(parents=True)
    try:
        found = sorted(glob.glob(TARBALLS))
        if found:
            tarball = Path(found[-1])
            source = f"the Debian 12 root tarball tests/source_machine.py caches (`{tarball}`)"
        else:
            cap = QUICK_BYTES if quick else HOST_BYTES
            tarball = host_tarball(work, cap)
            source = f"a {cap // 10**6} MB sample of this host's /{', /'.join(HOST_DIRS)}"
        members = read_members(tarball)
        specs = [(QUICK_BYTES, 1, "quick sample")] if quick else [
            (None, runs, "whole tree"), (SMALL_BYTES, 1, "small sample")]  # fmt: skip
        trees = tuple(measure_tree(work, tarball, members, cap=cap, runs=n, label=label, logs=logs)
                      for cap, n, label in specs)  # fmt: skip
    finally:
        _clear(work)
    mkfs = shlex.join([*MKFS, "-N", "INODES"]) + " FILE"
    return RestoreSetBench(source=source, commands=commands(), mkfs=mkfs, trees=trees)


def restore_main(set_dir: Path, dest: Path) -> int:
    """What the restore's steps 6 and 7 do with a set: every archive at once onto
    dest/NAME, verified; prints {"parts": {...}, "failures": [...]} on stdout."""
    manifest = load_set(set_dir)
    jobs = [ExtractJob(a, SetDirectory(set_dir), dest / a.name) for a in manifest.archives]
    results = extract_and_verify(jobs, lambda line: print(line, file=sys.stderr, flush=True))
    parts = {f"{step} {r.name}": s for r in results
             for step, s in (("extract", r.seconds), ("verify", r.verify_seconds))}  # fmt: skip
    failures = failure_lines(results)
    print(json.dumps({"parts": parts, "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["restore"] or len(sys.argv) != 4:
        sys.exit("usage: bench_restore_set.py restore SET_DIR DEST_DIR")
    sys.exit(restore_main(Path(sys.argv[2]), Path(sys.argv[3])))
