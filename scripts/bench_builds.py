"""scripts/bench's build timings: our `--all-nics` image and the anchors bench_anchors
builds (mkinitramfs, dracut), each described as a Build: wall times, size, modules."""

from __future__ import annotations

import shlex
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import bench_anchors
from bench_common import ROOT, display_path, log

from initrd_composer.errors import ComposeError
from initrd_composer.image.compression import resolve_level
from initrd_composer.image.reader import open_image, read_member
from initrd_composer.runner import run
from module_db.contract import MANIFEST_PATH, ImageManifest


@dataclass(frozen=True)
class Build:
    """One image and what it cost: every timed run of the same command."""

    key: str  # stable id in bench.json: ours-cold, ours-warm, ours-zstd19, ours-xz, mkinitramfs, dracut
    label: str
    command: str  # the command as a shell line, for the Commands section
    walls: tuple[float, ...]  # wall seconds of each run, in run order
    size_bytes: int
    compression: str  # per cpio segment, early first: "none+zstd"
    modules: Mapping[str, str]  # module name ("_" form) -> class (drivers/<dir>, fs, net...)
    content_bytes: int  # all regular files, uncompressed
    module_bytes: int  # the kernel-module files among them

    @property
    def wall_median(self) -> float:
        return statistics.median(self.walls)

    @property
    def wall_min(self) -> float:
        return min(self.walls)

    @property
    def classes(self) -> dict[str, int]:
        return dict(Counter(self.modules.values()))

    def as_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "command": self.command,
            "walls": list(self.walls),
            "wall_median": round(self.wall_median, 3),
            "wall_min": round(self.wall_min, 3),
            "size_bytes": self.size_bytes,
            "compression": self.compression,
            "content_bytes": self.content_bytes,
            "module_bytes": self.module_bytes,
            "module_count": len(self.modules),
            "classes": dict(sorted(self.classes.items())),
        }


# (key, compressor, level) of the trade-off builds; zstd -9 is what Debian's mkinitramfs uses.
VARIANTS: tuple[tuple[str, str, int | None], ...] = (
    ("ours-zstd9", "zstd", 9),
    ("ours-zstd19", "zstd", 19),
    ("ours-xz", "xz", None),
)


# ---------------------------------------------------------------- what an image holds


def modules_of_listing(listing: Sequence[str]) -> dict[str, str]:
    """Module name -> class for every kernel module file in an image listing."""
    return {
        bench_anchors.module_name(p): bench_anchors.module_class(p)
        for p in bench_anchors.module_paths(listing)
    }


def modules_of_manifest(manifest: ImageManifest) -> dict[str, str]:
    """Module name -> class from our image's manifest (paths relative to lib/modules/KVER)."""
    return {name: bench_anchors.module_class(m.path) for name, m in manifest.modules.items()}


@dataclass(frozen=True)
class ImageFacts:
    """What our reader sees in an image file."""

    compression: str
    paths: tuple[str, ...]
    content_bytes: int
    module_bytes: int


def image_facts(image: Path) -> ImageFacts:
    parsed = open_image(image)
    files = [m for m in parsed.members if m.kind == "file"]
    mods = set(bench_anchors.module_paths([m.path for m in files]))
    return ImageFacts(
        compression="+".join(s.compression for s in parsed.segments),
        paths=tuple(parsed.paths()),
        content_bytes=sum(m.size for m in files),
        module_bytes=sum(m.size for m in files if m.path in mods),
    )


# ---------------------------------------------------------------- running and describing builds


def our_argv(kver: str, out: Path, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "initrd_composer", "--kernel", kver, "--all-nics", *extra, "-o", str(out)]


def time_ours(argv: Sequence[str], cache_home: Path) -> float:
    start = time.monotonic()
    proc = run(argv, env={"XDG_CACHE_HOME": str(cache_home)}, cwd=ROOT, timeout=1800, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise ComposeError(f"{shlex.join(argv)}: {failure_line(proc.stderr.decode(errors='replace'))}")
    return wall


def failure_line(stderr: str) -> str:
    """The `error:` line of compose-initrd's stderr (its last line is only the hint)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    return (errors or lines or ["no output"])[-1]


def our_label(compress: str, level: int | None, cache: str) -> str:
    return f"ours {compress} -{resolve_level(compress, level)}, {cache} cache"


def describe_ours(
    key: str, label: str, argv: Sequence[str], cache_home: Path, walls: Sequence[float]
) -> Build:
    """A Build for our image at argv's -o: modules from the manifest, checked against the listing."""
    image = Path(argv[-1])
    text = read_member(image, MANIFEST_PATH).decode()
    modules = modules_of_manifest(ImageManifest.from_json(text, f"{image}:{MANIFEST_PATH}"))
    facts = image_facts(image)
    listed = modules_of_listing(facts.paths)
    if set(listed) != set(modules):
        raise ComposeError(
            f"{image}: manifest names {len(modules)} modules, the image holds {len(listed)}",
            "the image writer and manifest disagree; rebuild and report it",
        )
    shown = [display_path(Path(a)) if a.startswith("/") and a != sys.executable else a for a in argv]
    command = f"XDG_CACHE_HOME={display_path(cache_home)} {shlex.join(shown)}"
    return _build(key, label, command, walls=walls, image=image, modules=modules, facts=facts)


def describe_anchor(key: str, anchor: bench_anchors.Anchor, command: str, walls: Sequence[float]) -> Build:
    facts = image_facts(anchor.image)
    modules = modules_of_listing(facts.paths)
    return _build(key, anchor.name, command, walls=walls, image=anchor.image, modules=modules, facts=facts)


def _build(
    key: str, label: str, command: str, *, walls: Sequence[float], image: Path,
    modules: Mapping[str, str], facts: ImageFacts,
) -> Build:  # fmt: skip
    return Build(key, label, command, tuple(round(w, 3) for w in walls), image.stat().st_size,
                 facts.compression, modules, facts.content_bytes, facts.module_bytes)  # fmt: skip


def mkinitramfs_command(kver: str, out_dir: Path) -> str:
    argv = bench_anchors.mkinitramfs_argv(
        Path("<tmp>/initramfs-tools"), out_dir / f"mkinitramfs-{kver}.img", kver
    )
    return " ".join(display_path(Path(a)) if a.startswith("/") else a for a in argv)


def dracut_command(kver: str, out_dir: Path) -> str:
    base = bench_anchors.DRACUT_CACHE
    argv = bench_anchors.dracut_argv(base, kver, out_dir / f"dracut-{kver}.img", Path("<tmp>"))
    shown = " ".join(display_path(Path(a)) if a.startswith("/") else a for a in argv)
    return f"dracutbasedir={base / 'usr/lib/dracut'} {shown}"


# ---------------------------------------------------------------- the measurements


def measure_ours_and_mkinitramfs(
    kver: str, out_dir: Path, runs: int, anchor_runs: int
) -> tuple[Build, Build, Build]:
    """Cold build, then warm builds interleaved with mkinitramfs runs: (warm, cold, mkinitramfs).

    Cold means an empty XDG_CACHE_HOME (the modinfo and .pyc caches); the page cache is
    left alone, since dropping it would slow everyone else on the machine too.
    """
    cache_home = out_dir / "xdg-cache"
    shutil.rmtree(cache_home, ignore_errors=True)
    cache_home.mkdir(parents=True)
    argv = our_argv(kver, out_dir / "ours-zstd.img")
    cold_wall = time_ours(argv, cache_home)
    log(f"ours, cold cache: {cold_wall:.2f} s")
    cold = describe_ours("ours-cold", our_label("zstd", None, "cold"), argv, cache_home, [cold_wall])
    warm_walls: list[float] = []
    anchors: list[bench_anchors.Anchor] = []
    for i in range(max(runs, anchor_runs)):
        if i < runs:
            warm_walls.append(time_ours(argv, cache_home))
            log(f"ours warm run {i + 1}: {warm_walls[-1]:.2f} s")
        if i < anchor_runs:
            anchors.append(bench_anchors.build_mkinitramfs(kver, out_dir))
            log(f"mkinitramfs run {i + 1}: {anchors[-1].wall_seconds:.2f} s")
    warm = describe_ours("ours-warm", our_label("zstd", None, "warm"), argv, cache_home, warm_walls)
    mk_walls = [a.wall_seconds for a in anchors]
    mk = describe_anchor("mkinitramfs", anchors[-1], mkinitramfs_command(kver, out_dir), mk_walls)
    return warm, cold, mk


def measure_dracut(kver: str, out_dir: Path) -> Build:
    anchor = bench_anchors.build_dracut(kver, out_dir)
    log(f"dracut --no-hostonly: {anchor.wall_seconds:.2f} s")
    return describe_anchor("dracut", anchor, dracut_command(kver, out_dir), [anchor.wall_seconds])


def measure_variants(kver: str, out_dir: Path) -> list[Build]:
    """Our image at the VARIANTS compressions, warm cache, one run each."""
    cache_home = out_dir / "xdg-cache"
    builds = []
    for key, compress, level in VARIANTS:
        extra = ["--compress", compress] + ([] if level is None else ["--level", str(level)])
        argv = our_argv(kver, out_dir / f"{key}.img", extra)
        label = our_label(compress, level, "warm")
        wall = time_ours(argv, cache_home)
        log(f"{label}: {wall:.2f} s")
        builds.append(describe_ours(key, label, argv, cache_home, [wall]))
    return builds
