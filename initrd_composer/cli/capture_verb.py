"""`compose-initrd capture` and `compose-initrd layout`: a machine into a restore set.

Live (`--root /`, the default, or another mounted tree): the disks are those under the local
filesystems mounted there, found through /sys. `--disk IMAGE`: the image files are attached
read-only, the machine's filesystems mounted read-only as its etc/fstab says
(capture/mount_source.py), captured and detached again. The rescue image's `capture` boot
mode runs the same session code (capture/session.py) on the machine's own disks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.layout import dump_layout
from initrd_composer.capture.archive_children import ArchiveDone
from initrd_composer.capture.errors import CaptureError
from initrd_composer.capture.layout.collect import HostPaths, collect_layout
from initrd_composer.capture.mount_source import attach_images, mounted_machine
from initrd_composer.capture.session import (
    CapturePlan,
    CaptureProgress,
    plan_capture,
    read_mounts,
    run_capture,
    source_disks,
)
from initrd_composer.errors import ComposeError, UsageError

# In --disk mode the host's EFI variables are not the source machine's: none are recorded.
_NO_EFI = Path("/nonexistent/initrd-composer-no-efi")


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("capture", help="capture a machine (layout and filesystems) into a restore set")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR|/dev/nstN",
                   help="the restore-set directory (created; a mounted NFS share will do), or a tape "
                   "drive: an OBDR tape (header, rescue ISO, the set) it boots and restores from")
    p.add_argument("--tape", action="store_true",
                   help="-o is a new tape-image directory, written as an OBDR tape (implied for a drive)")
    p.add_argument("--stage", type=Path, default=Path("/var/tmp"), metavar="DIR",
                   help="for a tape: where the set is written first, with room for all of it "
                   "(removed after; default /var/tmp)")
    p.add_argument("--initrd", type=Path, default=None, metavar="FILE",
                   help="for a tape: the rescue initrd its ISO boots (default: one built for the "
                   "running kernel, as `compose-initrd obdr` builds it)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--root", type=Path, default=None,
                     help="capture the live tree mounted here (default /)")
    src.add_argument("--disk", type=Path, action="append", default=None, metavar="IMAGE",
                     help="capture the machine on this disk image (repeatable: all its disks)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out paths matching PATTERN (fnmatch; with /: from the machine's root; "
                   "without: a name at any depth); repeatable")
    p.add_argument("--dry-run", action="store_true", help="print what would be captured, write nothing")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="zstd threads (default: CPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-filesystem lines")
    p = sub.add_parser("layout", help="print the layout.json of disks (devices or image files)")
    p.add_argument("--disk", action="append", required=True, metavar="DISK",
                   help="a block device or a disk image file (repeatable)")
    p.add_argument("--root", type=Path, default=None, help="the captured system's root, for etc/fstab")
    p.add_argument("--gap-dir", type=Path, default=None, metavar="DIR",
                   help="write the raw boot-code files (disk-NAME-gap.bin, ...) here")


def run(args: argparse.Namespace) -> int:
    """The verbs; the capture side's errors become the CLI's one-line errors."""
    try:
        return capture(args) if args.verb == "capture" else layout(args)
    except (CaptureError, RestoreSetError) as exc:
        raise ComposeError(exc.message, exc.hint) from exc
    except BrokenPipeError:
        raise  # stdout closed early (`| head`): main() handles it
    except OSError as exc:  # a device or file the capture reads (the collector lets these through)
        what = exc.filename if exc.filename is not None else "a file"
        raise ComposeError(f"cannot read {what}: {exc.strerror or exc}",
                           "run as root, on the machine's own disks") from exc  # fmt: skip


def layout(args: argparse.Namespace) -> int:
    if args.gap_dir is not None and not args.gap_dir.is_dir():
        raise ComposeError(f"--gap-dir {args.gap_dir}: not a directory", "create it first")
    doc = collect_layout(args.disk, paths=HostPaths(source_root=args.root), gap_dir=args.gap_dir)
    sys.stdout.write(dump_layout(doc))
    return 0


def _warn(message: str) -> None:
    print(f"compose-initrd: warning: {message}", file=sys.stderr)


def _check_output(out: Path, dry_run: bool) -> Path:
    """The set directory, absolute: it must be (or become) a writable directory."""
    resolved = Path(os.path.realpath(out))
    if resolved.exists() and not resolved.is_dir():
        raise ComposeError(f"output {out} exists and is not a directory", "give a directory for the set")
    if dry_run:
        return resolved
    try:
        resolved.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".capture-probe-", dir=resolved)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ComposeError(f"cannot write to the output {out}: {exc.strerror}",
                           "choose a writable directory (a local disk or a mounted share)") from exc
    return resolved


def _to_tape(args: argparse.Namespace) -> bool:
    out: Path = args.output
    return bool(args.tape) or out.parts[:2] == ("/", "dev") or (out.exists() and out.is_char_device())


def capture_to_tape(args: argparse.Namespace) -> int:
    """`capture -o /dev/nstN`: the set into a stage directory, then `obdr --data` of it onto the
    tape. The tape's label records the data's size before the data, so the set cannot be
    streamed straight to the drive; the stage is removed either way."""
    from initrd_composer.cli.image_verbs import run_verb  # noqa: PLC0415
    from initrd_composer.cli.main import parse_args  # noqa: PLC0415
    from initrd_composer.media.obdr_writer import check_target  # noqa: PLC0415

    kind = check_target(args.output)  # before a long capture
    if args.initrd is not None and not args.initrd.is_file():
        raise ComposeError(f"--initrd {args.initrd}: no such file", "build one with `compose-initrd -o FILE`")
    if not args.stage.is_dir():
        raise ComposeError(f"--stage {args.stage}: not a directory",
                           "give a directory on a disk with room for the whole set")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="initrd-composer-capture-", dir=args.stage) as stage:
        set_dir = Path(stage) / "set"
        capture(argparse.Namespace(**{**vars(args), "tape": False, "output": set_dir}))
        if args.dry_run:
            return 0
        argv = ["obdr", "-o", str(args.output), "--data", str(set_dir)]
        argv += ["--initrd", str(args.initrd)] if args.initrd is not None else []
        status = run_verb(parse_args(argv))
    print(f"{args.output}: the set is tape file 2 of this OBDR tape ({kind}); its stage is removed")
    return status


def capture(args: argparse.Namespace) -> int:
    if _to_tape(args):
        return capture_to_tape(args)
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1", "or leave it out: one thread per CPU")
    if any(not p.strip("/") for p in args.exclude):
        raise UsageError("--exclude needs a pattern other than /", "e.g. --exclude '/var/cache/*'")
    out = _check_output(args.output, args.dry_run)
    with ExitStack() as stack:
        gap_dir = None if args.dry_run else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="capture-gaps-")))  # fmt: skip
        if args.disk:
            plan, doc, notes = stack.enter_context(_disk_plan(args, out, gap_dir))
        else:
            (plan, doc), notes = _live_plan(args, out, gap_dir), []
        if plan.refused:
            _warn("a restore will refuse this set (" + "; ".join(plan.refused) + "); capturing it anyway")
        for dev, kind in plan.uncaptured:
            _warn(f"{dev} ({kind}) is not mounted under {plan.root}: its files are not captured")
        if not plan.items:
            raise ComposeError(
                f"nothing to capture under {plan.root}: no local filesystem of the disks is mounted there",
                "mount the machine's filesystems, or use --disk",
            )
        if args.dry_run:
            print("\n".join([*notes, *plan.lines(), "dry run: nothing written"]))
            return 0
        if not args.no_progress:
            print("\n".join(f"capture: {n}" for n in notes), file=sys.stderr)
        with _progress(plan, args.no_progress) as progress:
            result = run_capture(plan, out, doc, gap_dir, progress, threads=args.threads)
    print(result.summary(out))
    return 0


def _live_plan(
    args: argparse.Namespace, out: Path, gap_dir: Path | None
) -> tuple[CapturePlan, dict[str, Any]]:
    root = Path(os.path.realpath(args.root or "/"))
    if not root.is_dir():
        raise ComposeError(f"--root {args.root}: not a directory", "give the mounted tree to capture")
    mounts = read_mounts()
    disks = source_disks(mounts, root)
    if not disks:
        raise ComposeError(f"no local filesystem is mounted at {root}",
                           "capture a mounted machine (ext2/3/4, xfs, btrfs, vfat), or use --disk IMAGE")
    doc = collect_layout(disks, paths=HostPaths(source_root=root), gap_dir=gap_dir)
    return plan_capture(doc, mounts, root=root, output=out, excludes=args.exclude), doc


@contextmanager
def _disk_plan(
    args: argparse.Namespace, out: Path, gap_dir: Path | None
) -> Iterator[tuple[CapturePlan, dict[str, Any], list[str]]]:
    with attach_images(args.disk) as devices, \
            tempfile.TemporaryDirectory(prefix="capture-source-") as scratch, \
            mounted_machine(devices, Path(scratch), gap_dir=gap_dir, efi_firmware=_NO_EFI) as (doc, source):
        notes = [f"disk {image}: {dev} (read-only)" for image, dev in zip(args.disk, devices, strict=True)]
        notes += [f"not mounted from etc/fstab: {note}" for note in source.skipped]
        plan = plan_capture(doc, read_mounts(), root=source.root, output=out, excludes=args.exclude)
        yield plan, doc, notes


class _Lines:
    """A line per archived filesystem (stderr is not a terminal)."""

    def advance(self, done_bytes: int) -> None:
        pass

    def archived(self, done: ArchiveDone) -> None:
        record = done.record
        line = (f"capture: {record.name}: {len(record.files)} files, {done.data_bytes / 1e6:.1f} MB of data "
                f"-> {record.file} ({record.size / 1e6:.1f} MB) in {done.seconds:.1f} s")  # fmt: skip
        print(line, file=sys.stderr, flush=True)


class _Bar:
    """rich's progress bar on stderr: bytes done / the filesystems' used bytes, rate, ETA."""

    def __init__(self, plan: CapturePlan) -> None:
        from rich.console import Console  # noqa: PLC0415 - only when a terminal shows it
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.names = [i.name for i in plan.items]
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self.task = self.progress.add_task(self._label(0), total=max(plan.total_bytes, 1))
        self.index = 0

    def _label(self, index: int) -> str:
        return f"capture {self.names[index]}" if index < len(self.names) else "capture done"

    def advance(self, done_bytes: int) -> None:
        total = self.progress.tasks[0].total or 0
        if done_bytes > total:  # used bytes is an estimate (btrfs compresses, ...)
            self.progress.update(self.task, total=done_bytes)
        self.progress.update(self.task, completed=done_bytes)

    def archived(self, done: ArchiveDone) -> None:
        record = done.record
        self.index += 1
        self.progress.update(self.task, description=self._label(self.index))
        self.progress.console.print(f"{record.name}: {len(record.files)} files -> {record.file} "
                                    f"({record.size / 1e6:.1f} MB)")  # fmt: skip


@contextmanager
def _progress(plan: CapturePlan, off: bool) -> Iterator[CaptureProgress | None]:
    if off:
        yield None
    elif not sys.stderr.isatty():
        yield _Lines()
    else:
        bar = _Bar(plan)
        with bar.progress:
            yield bar
            total = bar.progress.tasks[0].total or 0
            bar.progress.update(bar.task, completed=max(total, bar.progress.tasks[0].completed))
