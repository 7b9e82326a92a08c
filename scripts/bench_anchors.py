"""Benchmark anchors: what Debian's own initrd generators produce for the same kernel.

(a) initramfs-tools' mkinitramfs with MODULES=most (Debian's default generic image),
(b) dracut --no-hostonly from the dracut-core/-network .debs that scripts/setup unpacks
    (dracut-core conflicts with initramfs-tools, so it is never installed),
(c) how long udev coldplug + settle takes inside Debian's initramfs under QEMU.

Each build returns wall time, image size and the modules the image carries, counted
from `lsinitramfs` (which also walks dracut's early-microcode + main cpio pair).
scripts/bench imports this module; it is also runnable: `python3 scripts/bench_anchors.py`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from qemu_boot import BootError, Reply, boot

from initrd_composer.errors import ComposeError
from initrd_composer.runner import run

# scripts/setup unpacks dracut-core and dracut-network here (dpkg -x).
DRACUT_CACHE = Path("/var/cache/initrd-composer/dracut")
INITRAMFS_TOOLS_CONF = Path("/etc/initramfs-tools")
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


@dataclass(frozen=True)
class Anchor:
    """One reference image and what it contains."""

    name: str
    image: Path
    wall_seconds: float
    size_bytes: int
    module_count: int
    module_names: tuple[str, ...]  # sorted, "-" normalised to "_"
    classes: dict[str, int]  # "drivers/net", "fs", ... -> module count

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["image"] = str(self.image)
        data["module_names"] = list(self.module_names)
        return data


@dataclass(frozen=True)
class UdevTiming:
    """Guest uptimes (seconds) around initramfs-tools' init-top stage (udev coldplug)."""

    init_start: float  # kernel timestamp of "Run /init as init process"
    top: float  # at the break=top shell, before init-top scripts start udevd
    premount: float  # at the break=premount shell: trigger + settle + load_modules done
    wall_seconds: float

    @property
    def coldplug_seconds(self) -> float:
        return round(self.premount - self.top, 2)


# ---------------------------------------------------------------- image listing


def module_paths(listing: Sequence[str]) -> list[str]:
    """The kernel-module entries of an image listing (one path per line)."""
    return [p for p in listing if p.endswith(_MODULE_SUFFIXES)]


def module_name(path: str) -> str:
    """`.../kernel/drivers/net/e1000/e1000.ko.zst` -> `e1000` (kmod's `-`->`_` form)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def module_class(path: str) -> str:
    """Group by kernel tree: drivers/<dir> under drivers, else the top dir (fs, net...).

    Modules outside kernel/ (updates/, extra/, dkms) are grouped by that first dir.
    """
    parts = path.split("/")
    if "kernel" in parts:
        rel = parts[parts.index("kernel") + 1 :]
    else:
        mod_idx = parts.index("modules") if "modules" in parts else -1
        rel = parts[mod_idx + 2 :] if mod_idx >= 0 else parts
    if len(rel) <= 1:
        return "(top)"
    if rel[0] == "drivers" and len(rel) > 2:
        return f"drivers/{rel[1]}"
    return rel[0]


def summarize(name: str, image: Path, wall_seconds: float, listing: Sequence[str]) -> Anchor:
    """Build an Anchor from an image's file listing."""
    mods = module_paths(listing)
    classes = Counter(module_class(p) for p in mods)
    return Anchor(
        name=name,
        image=image,
        wall_seconds=round(wall_seconds, 2),
        size_bytes=image.stat().st_size,
        module_count=len(mods),
        module_names=tuple(sorted({module_name(p) for p in mods})),
        classes=dict(sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def list_image(image: Path) -> list[str]:
    """Paths in an initramfs (all concatenated cpio segments), via initramfs-tools."""
    out = run(["lsinitramfs", image], timeout=300).stdout.decode(errors="replace")
    return [line for line in out.splitlines() if line]


# ---------------------------------------------------------------- (a) mkinitramfs


def with_setting(conf_text: str, key: str, value: str) -> str:
    """initramfs.conf text with KEY=value (replacing the active line or appending)."""
    lines = conf_text.splitlines()
    pattern = re.compile(rf"^\s*{re.escape(key)}=")
    if any(pattern.match(line) for line in lines):
        lines = [f"{key}={value}" if pattern.match(line) else line for line in lines]
    else:
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def with_modules_setting(conf_text: str, value: str) -> str:
    return with_setting(conf_text, "MODULES", value)


def mkinitramfs_argv(conf_dir: Path, out: Path, kver: str) -> list[str]:
    return ["mkinitramfs", "-d", str(conf_dir), "-o", str(out), kver]


def build_mkinitramfs(
    kver: str, out_dir: Path, *, conf_src: Path = INITRAMFS_TOOLS_CONF, modules: str = "most",
    boot: str | None = None,
) -> Anchor:  # fmt: skip
    """Run mkinitramfs on a temp copy of /etc/initramfs-tools with MODULES=`modules` (and
    BOOT=`boot`, the default boot script, when given: mkinitramfs-BOOT-KVER.img).

    COMPRESS stays whatever Debian's initramfs.conf says (zstd on bookworm).
    """
    if not (conf_src / "initramfs.conf").is_file():
        raise ComposeError(
            f"{conf_src}/initramfs.conf: not found", "install initramfs-tools (scripts/setup)"
        )
    out = out_dir / (f"mkinitramfs-{boot}-{kver}.img" if boot else f"mkinitramfs-{kver}.img")
    with tempfile.TemporaryDirectory(prefix="anchor-itconf-") as tmp:
        conf_dir = Path(tmp) / "initramfs-tools"
        shutil.copytree(conf_src, conf_dir, symlinks=True)
        conf = conf_dir / "initramfs.conf"
        text = with_modules_setting(conf.read_text(), modules)
        conf.write_text(with_setting(text, "BOOT", boot) if boot else text)
        start = time.monotonic()
        run(mkinitramfs_argv(conf_dir, out, kver), timeout=1800)
        wall = time.monotonic() - start
    name = f"mkinitramfs MODULES={modules}" + (f" BOOT={boot}" if boot else "")
    return summarize(name, out, wall, list_image(out))


# ---------------------------------------------------------------- (b) dracut


def dracut_base(dracut_dir: Path = DRACUT_CACHE) -> Path:
    """The unpacked dracut library dir (modules.d, dracut-init.sh, dracut-install)."""
    base = dracut_dir / "usr/lib/dracut"
    if not (base / "dracut-init.sh").is_file():
        raise ComposeError(
            f"{base}/dracut-init.sh: not found", "run scripts/setup (it unpacks dracut-core there)"
        )
    return base


def dracut_argv(
    dracut_dir: Path, kver: str, out: Path, conf_dir: Path, *, network: bool = True
) -> list[str]:
    """dracut from the unpacked .deb: its script run by bash, with no host config.

    `--conf /dev/null --confdir EMPTY` keeps any /etc/dracut.conf.d out; dracutbasedir
    (environment) points dracut at its unpacked modules. kernel-network-modules is an
    on-request dracut module (dracut-network): without it no NIC driver is included.
    """
    argv = [
        "bash", str(dracut_dir / "usr/bin/dracut"),
        "--conf", "/dev/null", "--confdir", str(conf_dir),
        "--no-hostonly", "--force", "--kver", kver,
    ]  # fmt: skip
    if network:
        argv += ["--add", "kernel-network-modules"]
    return [*argv, str(out)]


def build_dracut(
    kver: str, out_dir: Path, *, dracut_dir: Path = DRACUT_CACHE, network: bool = True
) -> Anchor:
    """dracut --no-hostonly (generic image) for `kver`, gzip as dracut picks by default."""
    base = dracut_base(dracut_dir)
    if network and not (base / "modules.d/90kernel-network-modules").is_dir():
        raise ComposeError(
            f"{base}/modules.d/90kernel-network-modules: not found",
            "run scripts/setup (it unpacks dracut-network there)",
        )
    out = out_dir / f"dracut-{kver}.img"
    with tempfile.TemporaryDirectory(prefix="anchor-dracut-") as tmp:
        argv = dracut_argv(dracut_dir, kver, out, Path(tmp), network=network)
        start = time.monotonic()
        run(argv, env={"dracutbasedir": str(base)}, timeout=1800)
        wall = time.monotonic() - start
    name = "dracut --no-hostonly" + (" +kernel-network-modules" if network else "")
    return summarize(name, out, wall, list_image(out))


# ---------------------------------------------------------------- (c) udev coldplug

_INIT_START = re.compile(r"^\[\s*(\d+\.\d+)\] Run /init as init process")
_SHELL_LINE = "Spawning shell within the initramfs"


def uptime_probe(tag: str) -> str:
    """Shell input printing `UPTIME_<tag> <uptime>`; the quotes keep the tty echo of the
    command itself from matching `UPTIME_<tag> `."""
    return f'echo UPTIME_"{tag}" $(cat /proc/uptime)'


def parse_udev_timing(lines: Sequence[str], wall_seconds: float) -> UdevTiming:
    """Read init start and the two break-shell uptimes out of a console transcript."""
    found: dict[str, float] = {}
    for line in lines:
        if match := _INIT_START.match(line):
            found.setdefault("init", float(match.group(1)))
        for tag in ("TOP", "PREMOUNT"):
            if line.startswith(f"UPTIME_{tag} "):
                found.setdefault(tag, float(line.split()[1]))
    missing = [k for k in ("init", "TOP", "PREMOUNT") if k not in found]
    if missing:
        raise ComposeError(
            f"console transcript lacks {', '.join(missing)} marks",
            "boot without `quiet` and check that break=top,premount reached a shell",
        )
    return UdevTiming(found["init"], found["TOP"], found["PREMOUNT"], round(wall_seconds, 2))


def measure_udev_coldplug(
    kver: str,
    *,
    initrd: Path | None = None,
    devices: Sequence[str] = (),
    timeout: float = 180.0,
) -> UdevTiming:
    """Boot Debian's initramfs with break=top,premount and read /proc/uptime at both.

    initramfs-tools runs udevd + `udevadm trigger` + `udevadm settle` in init-top, between
    those two breaks (then load_modules, empty by default); the shell answers typed
    commands on the serial console, so we ask it for /proc/uptime and `exit` to go on.
    """
    kernel = Path(f"/boot/vmlinuz-{kver}")
    image = initrd or Path(f"/boot/initrd.img-{kver}")
    try:
        result = boot(
            kernel,
            image,
            "console=ttyS0 break=top,premount",
            devices,
            timeout=timeout,
            until="UPTIME_PREMOUNT ",
            replies=[
                Reply(_SHELL_LINE, uptime_probe("TOP") + "; exit\n"),
                Reply(_SHELL_LINE, uptime_probe("PREMOUNT") + "\n"),
            ],
        )
    except BootError as exc:
        raise ComposeError(str(exc), "install qemu-system-x86 (scripts/setup)") from exc
    if result.reason != "matched":
        raise ComposeError(
            f"udev timing boot of {image} ended by {result.reason} after {result.elapsed:.0f}s",
            "look at the console with scripts/qemu_boot.py --append 'console=ttyS0 break=top'",
        )
    return parse_udev_timing(result.lines, result.elapsed)


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the benchmark anchor images.")
    parser.add_argument("--kernel", required=True, help="exact kernel version, e.g. 6.1.0-56-amd64")
    parser.add_argument("--out", type=Path, default=Path("out/anchors"))
    parser.add_argument(
        "--only", choices=["mkinitramfs", "dracut", "udev"], action="append", default=None
    )
    args = parser.parse_args(argv)
    wanted = args.only or ["mkinitramfs", "dracut", "udev"]
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {}
    try:
        if "mkinitramfs" in wanted:
            report["mkinitramfs"] = build_mkinitramfs(args.kernel, args.out).as_json()
        if "dracut" in wanted:
            report["dracut"] = build_dracut(args.kernel, args.out).as_json()
        if "udev" in wanted:
            timing = measure_udev_coldplug(args.kernel)
            report["udev"] = {**asdict(timing), "coldplug_seconds": timing.coldplug_seconds}
    except ComposeError as exc:
        print(f"bench_anchors: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    (args.out / "anchors.json").write_text(json.dumps(report, indent=2) + "\n")
    for entry in report.values():
        if isinstance(entry, dict):
            entry.pop("module_names", None)  # long; anchors.json keeps them
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
