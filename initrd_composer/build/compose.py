"""Build one image: plan every part, then write it atomically. The host side's main job."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from initrd_composer.atomic_output import atomic_output
from initrd_composer.build.ca_bundle import ca_bundle_entries
from initrd_composer.build.elf_closure import RootFS
from initrd_composer.build.firmware_plan import firmware_search_dirs, plan_firmware
from initrd_composer.build.host_nics import host_nic_modules
from initrd_composer.build.icu_trim import is_icu_data_library, trimmed_icu_file
from initrd_composer.build.image_layout import (
    SHELL_COMMANDS,
    canonical_paths,
    init_script,
    shell_command_script,
    skeleton_entries,
)
from initrd_composer.build.image_modules import build_manifest, index_entries, pack_modules
from initrd_composer.build.kconfig import check_compressor, load_kernel_config
from initrd_composer.build.kernel_locate import KernelLocation, locate_kernel
from initrd_composer.build.microcode import microcode_segment
from initrd_composer.build.module_files import ModinfoCache, default_cache_dir
from initrd_composer.build.module_plan import DEFAULT_CLASSES, ModulePlan, plan_modules
from initrd_composer.build.python_runtime import DEFAULT_BOOT_PACKAGES, DEFAULT_PYTHON, plan_python_runtime
from initrd_composer.build.terminfo import terminfo_entries
from initrd_composer.build.tools_runtime import ToolsRuntime, plan_tools_runtime
from initrd_composer.errors import ComposeError
from initrd_composer.image.compression import compressing
from initrd_composer.image.cpio_writer import write_cpio
from initrd_composer.image.entries import Entry, chardev_entry, data_entry, dir_entry, symlink_entry
from initrd_composer.source_date import source_date_epoch
from module_db.contract import BOOT_DEFAULTS, MANIFEST_PATH, ImageManifest
from module_db.errors import ModuleDbError
from module_db.kernel_modules import KernelModules
from module_db.load import load_kernel_modules


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    kernel: str | None = None
    root: Path = Path("/")
    all_nics: bool = False
    classes: tuple[str, ...] = DEFAULT_CLASSES
    add_modules: tuple[str, ...] = ()
    omit_modules: tuple[str, ...] = ()
    compress: str = "zstd"
    level: int | None = None
    keep_compressed_modules: bool = False
    python: Path = DEFAULT_PYTHON
    firmware_dirs: tuple[Path, ...] | None = None
    microcode: bool = True
    sys_root: Path = Path("/sys")
    epoch: int | None = None
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    boot_defaults: tuple[tuple[str, str], ...] = ()
    keep_icu_data: bool = False


@dataclass(frozen=True)
class ImagePlan:
    kernel: KernelLocation
    km: KernelModules
    modules: ModulePlan
    manifest: ImageManifest
    entries: tuple[Entry, ...]
    warnings: tuple[str, ...]
    epoch: int
    started: float  # time.monotonic() when planning began: the build's seconds count from it


@dataclass(frozen=True)
class BuildReport:
    output: Path
    kernel: str
    size: int
    sha256: str
    modules: int
    firmware_present: int
    firmware_missing: tuple[str, ...]
    warnings: tuple[str, ...]
    seconds: float
    microcode: bool


def load_kernel(spec: str | None, root: Path) -> tuple[KernelLocation, KernelModules]:
    loc = locate_kernel(spec, root)
    try:
        return loc, load_kernel_modules(loc.moddir, loc.version)
    except ModuleDbError as exc:
        raise ComposeError(str(exc), "reinstall the kernel package or run `depmod KVER`") from None


def plan_image(opts: BuildOptions) -> ImagePlan:
    started = time.monotonic()
    loc, km = load_kernel(opts.kernel, opts.root)
    # Without SOURCE_DATE_EPOCH, the kernel's modules.dep mtime: stable for one kernel.
    epoch = opts.epoch if opts.epoch is not None else source_date_epoch(loc.moddir / "modules.dep")
    host_nics = {} if opts.all_nics else host_nic_modules(km, opts.sys_root)
    plan = plan_modules(
        km,
        all_nics=opts.all_nics,
        host_nics=host_nics,
        classes=opts.classes,
        add=opts.add_modules,
        omit=opts.omit_modules,
    )
    # The runtime planning mostly waits on the target interpreter (import analysis,
    # bytecode): let it run while this thread reads module files.
    with ThreadPoolExecutor(max_workers=1) as pool:
        runtime = pool.submit(_plan_runtime, opts)
        cache = ModinfoCache(None if opts.cache_dir is None else opts.cache_dir / "modinfo.json")
        packed = pack_modules(plan, km, loc.moddir, cache, opts.keep_compressed_modules)
        cache.save()
        tools, python = runtime.result()
    dirs = list(opts.firmware_dirs) if opts.firmware_dirs else firmware_search_dirs(opts.root, km.version)
    firmware = plan_firmware(packed.firmware_wanted, dirs)
    boot = {**BOOT_DEFAULTS, **dict(opts.boot_defaults)}
    manifest = build_manifest(
        plan,
        km,
        packed=packed,
        firmware_present=firmware.present,
        firmware_missing=firmware.missing,
        boot=boot,
    )
    python_path = RootFS(opts.root).resolve(str(opts.python)).path
    ca_entries, ca_warnings = ca_bundle_entries(opts.root)
    terminfo, terminfo_warnings = terminfo_entries(opts.root)
    entries = canonical_paths([
        *ca_entries,
        *terminfo,
        *skeleton_entries(),
        *_device_nodes(),
        *tools.entries,
        *python,
        *packed.entries,
        *firmware.entries,
        *index_entries(manifest, km),
        data_entry(MANIFEST_PATH, manifest.to_json().encode()),
        data_entry("init", init_script("/" + python_path), mode=0o755, origin="boot side"),
        *(data_entry(path, shell_command_script("/" + python_path, module), mode=0o755, origin="boot side")
          for path, module in SHELL_COMMANDS.items()),
    ])
    warnings = [*tools.warnings, *ca_warnings, *terminfo_warnings]
    if firmware.missing:
        warnings.append(
            f"{len(firmware.missing)} firmware files named by packed modules are not installed "
            f"(listed in {MANIFEST_PATH}); install the firmware-* packages to include them"
        )
    if not opts.keep_icu_data:
        entries = [_trim_icu(e) for e in entries]
    return ImagePlan(
        kernel=loc,
        km=km,
        modules=plan,
        manifest=manifest,
        entries=tuple(entries),
        warnings=tuple(warnings),
        epoch=epoch,
        started=started,
    )


def _plan_runtime(opts: BuildOptions) -> tuple[ToolsRuntime, list[Entry]]:
    tools = plan_tools_runtime(root=opts.root)
    python = plan_python_runtime(
        DEFAULT_BOOT_PACKAGES, opts.python, opts.root, cache_covers=tools.entries, cache_dir=opts.cache_dir
    )
    return tools, python


def _trim_icu(entry: Entry) -> Entry:
    if entry.kind != "file" or entry.source is None or not is_icu_data_library(entry.path):
        return entry
    return data_entry(entry.path, trimmed_icu_file(entry.source), entry.mode, entry.origin + ", trimmed")


def _device_nodes() -> list[Entry]:
    """Nodes the kernel and the interpreter need before devtmpfs is mounted: the console
    for init's stdio, null, and urandom for Python's hash seed."""
    return [
        dir_entry("dev"),
        chardev_entry("dev/console", 5, 1, 0o600),
        chardev_entry("dev/null", 1, 3, 0o666),
        chardev_entry("dev/urandom", 1, 9, 0o666),
        chardev_entry("dev/kmsg", 1, 11, 0o644),
        symlink_entry("dev/fd", "/proc/self/fd"),
    ]


def build_image(opts: BuildOptions, plan: ImagePlan | None = None) -> BuildReport:
    """Write the image; the report's seconds run from the start of planning (plan_image,
    here or the caller's) to the output renamed into place."""
    if plan is None:
        plan = plan_image(opts)
    config = load_kernel_config(plan.kernel.version, plan.kernel.moddir, opts.root)
    warning = check_compressor(config, opts.compress, plan.kernel.version)
    warnings = list(plan.warnings) + ([warning] if warning else [])
    early = microcode_segment(opts.root, plan.epoch) if opts.microcode else b""
    digest = hashlib.sha256()

    class _Hashing:
        """Tee writes into the digest so the image is not read back to hash it."""

        def __init__(self, out: object) -> None:
            self._out = out

        def write(self, data: bytes, /) -> int:
            digest.update(data)
            return self._out.write(data)  # type: ignore[attr-defined,no-any-return]

    with atomic_output(opts.output) as raw:
        out = _Hashing(raw)
        if early:
            out.write(early)
        with compressing(out, opts.compress, opts.level) as sink:
            write_cpio(plan.entries, sink, plan.epoch)
        size = raw.tell()
    return BuildReport(
        output=opts.output,
        kernel=plan.kernel.version,
        size=size,
        sha256=digest.hexdigest(),
        modules=len(plan.modules.modules),
        firmware_present=len(plan.manifest.firmware_present),
        firmware_missing=plan.manifest.firmware_missing,
        warnings=tuple(warnings),
        seconds=time.monotonic() - plan.started,
        microcode=bool(early),
    )


def modules_summary(plan: ImagePlan) -> dict[str, int]:
    counts: dict[str, int] = {}
    for mod in plan.modules.modules.values():
        key = mod.module_class or "dependency"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


__all__: Sequence[str] = ("BuildOptions", "BuildReport", "ImagePlan", "build_image", "plan_image")
