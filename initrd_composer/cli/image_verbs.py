"""What each compose-initrd verb does with parsed arguments; returns an exit status."""

from __future__ import annotations

import argparse
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from initrd_composer.atomic_output import check_output_dir
from initrd_composer.build.compose import (
    BuildOptions,
    BuildReport,
    build_image,
    load_kernel,
    modules_summary,
    plan_image,
)
from initrd_composer.build.host_nics import host_nic_modules
from initrd_composer.build.module_files import default_cache_dir
from initrd_composer.build.module_plan import plan_modules
from initrd_composer.errors import ComposeError, UsageError
from initrd_composer.media.medium_reader import open_medium
from module_db.alias_match import AliasIndex
from module_db.classify import class_of_path
from module_db.contract import MANIFEST_PATH, ImageManifest
from module_db.names import normalize_name


def _split(text: str) -> tuple[str, ...]:
    return tuple(w for w in text.replace(" ", ",").split(",") if w)


def _warn(message: str) -> None:
    print(f"compose-initrd: warning: {message}", file=sys.stderr)


def build(args: argparse.Namespace) -> int:
    if args.output is not None:
        check_output_dir(args.output)
    if args.no_cache:
        with tempfile.TemporaryDirectory(prefix="initrd-composer-nocache-") as scratch:
            _build(args, Path(scratch))
    else:
        _build(args, default_cache_dir())
    return 0


def build_into(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    """Build the initrd a media verb places, into `scratch`; returns its path and sha256."""
    out = scratch / "initrd.img"
    build_args = argparse.Namespace(**{**vars(args), "output": out})
    # The scratch file is gone once the medium holds its copy: name it as the medium does.
    report = _build(build_args, scratch if args.no_cache else default_cache_dir(), shown_as="initrd.img")
    return out, report.sha256


def _build(args: argparse.Namespace, cache_dir: Path, shown_as: str | None = None) -> BuildReport:
    opts = BuildOptions(
        output=Path("."),  # replaced below once the kernel version is known
        kernel=args.kernel,
        root=args.root,
        all_nics=args.all_nics,
        add_modules=_split(args.add_modules),
        omit_modules=_split(args.omit_modules),
        compress=args.compress,
        level=args.level,
        keep_compressed_modules=args.keep_compressed_modules,
        python=args.python,
        firmware_dirs=tuple(args.firmware_dir) if args.firmware_dir else None,
        microcode=not args.no_microcode,
        sys_root=args.sys_root,
        cache_dir=cache_dir,
        keep_icu_data=args.keep_icu_data,
    )
    plan = plan_image(opts)
    output = args.output or Path(f"initrd-{plan.kernel.version}.img")
    opts = BuildOptions(**{**opts.__dict__, "output": output})
    report = build_image(opts, plan)
    for warning in report.warnings:
        _warn(warning)
    classes = ", ".join(f"{k} {v}" for k, v in modules_summary(plan).items())
    name = shown_as or report.output
    print(
        f"{name}: {report.size / 2**20:.1f} MiB, kernel {report.kernel}, "
        f"{report.modules} modules ({classes}), firmware {report.firmware_present} packed "
        f"/ {len(report.firmware_missing)} missing, {'with' if report.microcode else 'no'} microcode, "
        f"{report.seconds:.2f} s"
    )
    if shown_as is None:  # a media verb prints the sha256 of what it placed
        print(f"sha256 {report.sha256}  {report.output}")
    return report


def ls(args: argparse.Namespace) -> int:
    image = open_medium(args.image)
    for m in image.members:
        if args.long:
            kind = {"dir": "d", "symlink": "l", "chardev": "c", "blockdev": "b"}.get(m.kind, "-")
            perms = stat.filemode(m.mode)[1:]
            extra = f" -> {m.target}" if m.target else ""
            size = f"{m.rdev[0]},{m.rdev[1]}" if m.kind in ("chardev", "blockdev") else str(m.size)
            print(f"{kind}{perms} {size:>10} {m.path}{extra}")
        else:
            print(m.path)
    return 0


def deps(args: argparse.Namespace) -> int:
    _loc, km = load_kernel(args.kernel, args.root)
    wanted: list[str] = []
    for word in args.modules:
        name = normalize_name(word)
        if name in km.deps:
            wanted.append(name)
        elif km.is_builtin(name):
            _warn(f"{name} is built into kernel {km.version}: nothing to load")
        else:
            raise ComposeError(
                f"no module {word!r} in kernel {km.version}",
                "check the spelling, or use `match` for an alias",
            )
    for name in km.load_order(wanted):
        print(name)
    return 0


def match(args: argparse.Namespace) -> int:
    _loc, km = load_kernel(args.kernel, args.root)
    for modalias in args.modaliases:
        mods = km.resolve(modalias)
        print(f"{modalias}\t{','.join(mods) if mods else '-'}")
    return 0


def explain(args: argparse.Namespace) -> int:
    _loc, km = load_kernel(args.kernel, args.root)
    name = normalize_name(args.module)
    if name not in km.deps:
        if km.is_builtin(name):
            print(f"{name}: built into kernel {km.version}; never packed, always available")
            return 0
        raise ComposeError(f"no module {args.module!r} in kernel {km.version}", "check the spelling")
    host = {} if args.all_nics else host_nic_modules(km, args.sys_root)
    plan = plan_modules(km, all_nics=args.all_nics, host_nics=host,
                        add=_split(args.add_modules), omit=_split(args.omit_modules))
    path = km.deps[name].path
    cls = class_of_path(path) or "none"
    mod = plan.modules.get(name)
    if mod is None:
        omitted = {normalize_name(w) for w in _split(args.omit_modules)}
        why = "omitted by --omit-modules" if name in omitted else (
            "class nic needs --all-nics (no host NIC uses it)" if cls == "nic" and not args.all_nics else
            f"class {cls} is not packed and no packed module depends on it")
        print(f"{name}: not packed ({path}): {why}")
        return 0
    kind, _, detail = mod.reason.partition(":")
    text = {
        "class": f"packed: driver class {detail}",
        "host-nic": f"packed: the build host's NIC {detail} uses it",
        "added": "packed: asked for with --add-modules",
        "dep": f"packed: pulled in by {detail} (dependency, softdep or weakdep)",
    }.get(kind, f"packed: {mod.reason}")
    print(f"{name}: {text} ({path}, class {cls})")
    chain = [n for n in km.load_order([name]) if n != name]
    if chain:
        print(f"{name}: loads after {', '.join(chain)}")
    return 0


def check(args: argparse.Namespace) -> int:
    image = open_medium(args.image)
    source = f"{args.image}:{MANIFEST_PATH}"
    try:
        manifest_text = image.read(MANIFEST_PATH).decode()
    except ComposeError as exc:  # e.g. another tool's initrd
        raise ComposeError(exc.message, "check reads images built by compose-initrd") from None
    manifest = ImageManifest.from_json(manifest_text, source)
    try:
        lines = args.modaliases.read_text().splitlines()
    except OSError as exc:
        raise ComposeError(
            f"cannot read {args.modaliases}: {exc.strerror}", "give a file of modaliases"
        ) from None
    packed = AliasIndex(manifest.aliases)
    builtin = AliasIndex(manifest.builtin_aliases)
    driven = missing = 0
    for line in lines:
        modalias = line.strip()
        if not modalias or modalias.startswith("#"):
            continue
        mods = packed.match(modalias)
        if mods:
            driven += 1
            print(f"{modalias}\tdriven\t{','.join(mods)}")
        elif builtin_mods := builtin.match(modalias):
            driven += 1
            print(f"{modalias}\tbuilt-in\t{','.join(builtin_mods)}")
        else:
            missing += 1
            print(f"{modalias}\tmissing\t-")
    print(f"{driven} driven, {missing} without a driver in {args.image} (kernel {manifest.kernel})",
          file=sys.stderr)
    return 0


def run_verb(args: argparse.Namespace) -> int:
    handlers = {"build": build, "ls": ls, "deps": deps, "match": match, "explain": explain, "check": check}
    if args.verb in ("iso", "pxe", "obdr"):
        from initrd_composer.cli import media_verbs  # noqa: PLC0415

        media: dict[str, Callable[[argparse.Namespace, media_verbs.Builder], int]]
        media = {"iso": media_verbs.iso, "pxe": media_verbs.pxe, "obdr": media_verbs.obdr}
        return media[args.verb](args, build_into)
    handler = handlers.get(args.verb)
    if handler is None:
        raise UsageError("no verb given", "see `compose-initrd --help`")
    return handler(args)
