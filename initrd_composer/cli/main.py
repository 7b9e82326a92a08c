"""compose-initrd: the command line. Only main() prints; everything below raises."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from initrd_composer import __version__
from initrd_composer.errors import ComposeError, UsageError
from module_db.errors import ModuleDbError

PROG = "compose-initrd"
VERBS = ("build", "ls", "explain", "deps", "match", "check", "iso", "pxe", "obdr", "capture", "layout")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() owns output and exit codes."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, f"see `{PROG} --help`")


def _kernel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", "-k", metavar="K", help="version, pattern (6.x, 6.1.*) or modules directory")
    p.add_argument("--root", type=Path, default=Path("/"), help="build from this sysroot (default /)")


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all-nics", action="store_true", help="every wired NIC driver, not only the host's")
    p.add_argument("--add-modules", default="", metavar="A,B", help="extra modules or aliases")
    p.add_argument("--omit-modules", default="", metavar="A,B", help="modules to leave out")
    p.add_argument("--sys-root", type=Path, default=Path("/sys"), help=argparse.SUPPRESS)


def _build_args(p: argparse.ArgumentParser, output: bool = True) -> None:
    _kernel_args(p)
    _selection_args(p)
    if output:
        p.add_argument("-o", "--output", type=Path, default=None, help="image file (default initrd-KVER.img)")
    p.add_argument("--compress", choices=("zstd", "xz", "gzip", "none"), default="zstd")
    p.add_argument("--level", type=int, default=None, help="compression level")
    p.add_argument("--keep-compressed-modules", action="store_true",
                   help="pack .ko.xz/.ko.zst as they are instead of decompressing")
    p.add_argument("--python", type=Path, default=Path("/usr/bin/python3"),
                   help="interpreter packed for /init (inside --root)")
    p.add_argument("--firmware-dir", type=Path, action="append", default=None,
                   help="look for firmware here instead of ROOT/lib/firmware (repeatable)")
    p.add_argument("--no-microcode", action="store_true", help="no early microcode segment")
    p.add_argument("--no-cache", action="store_true", help="do not use or fill the on-disk cache")
    p.add_argument("--keep-icu-data", action="store_true",
                   help="pack ICU's whole data library instead of the converter alias table only")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Compose one rescue initrd with every driver, and the media that boot it.",
        epilog=f"Without a verb, {PROG} builds: `{PROG} --kernel 6.x --all-nics -o initrd.img`. "
        f"`{PROG} VERB --help` shows a verb's options.",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=16, width=100),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="verb", parser_class=_Parser, title="verbs", metavar="VERB")
    _build_args(sub.add_parser("build", help="build an image (the default verb)"))
    p = sub.add_parser("ls", help="list an initrd's files (also on an ISO or OBDR tape), like lsinitramfs")
    p.add_argument("image", type=Path)
    p.add_argument("-l", "--long", action="store_true", help="mode, size and link target too")
    p = sub.add_parser("explain", help="why a module is (or is not) in the image")
    _kernel_args(p)
    _selection_args(p)
    p.add_argument("module")
    p = sub.add_parser("deps", help="dependency closure in load order, one module per line")
    _kernel_args(p)
    p.add_argument("modules", nargs="+")
    p = sub.add_parser("match", help="modules a modalias resolves to")
    _kernel_args(p)
    p.add_argument("modaliases", nargs="+")
    p = sub.add_parser("check", help="which of a machine's devices an image drives")
    p.add_argument("image", type=Path)
    p.add_argument("--modaliases", type=Path, required=True, metavar="FILE",
                   help="one modalias per line, e.g. from `cat /sys/bus/*/devices/*/modalias`")
    _media_parsers(sub)
    from initrd_composer.cli import capture_verb  # noqa: PLC0415

    capture_verb.add_parsers(sub)
    return parser


def _media_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    from initrd_composer.cli.media_verbs import media_args  # noqa: PLC0415

    p = sub.add_parser("iso", help="bootable ISO: BIOS, UEFI with Secure Boot, hybrid for USB")
    p.add_argument("-o", "--output", type=Path, required=True, help="the ISO file to write")
    _build_args(p, output=False)
    media_args(p, data=True)
    p.add_argument("--media-size", default="dvd", metavar="SIZE",
                   help="refuse to write more than this: cd, dvd (default), dvd-dl, bd, 4G, ... or none")
    p = sub.add_parser("obdr", help="HP One-Button Disaster Recovery tape or tape-image directory")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR|/dev/nstN",
                   help="a tape device (non-rewinding) or a new tape-image directory")
    _build_args(p, output=False)
    media_args(p, data=True)
    p.add_argument("--block-size", type=int, default=65536, help="block size of the data file (bytes)")
    p.add_argument("--capacity", default="none", metavar="SIZE",
                   help="refuse to write more than this, e.g. 400G for an LTO-3 (default none)")
    p = sub.add_parser("pxe", help="a TFTP/HTTP root: pxelinux, iPXE, GRUB (UEFI) and a dnsmasq snippet")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="the tree to write")
    _build_args(p, output=False)
    media_args(p, data=False)
    p.add_argument("--nfs", default=None, metavar="SERVER:/PATH", help="restore data over NFS")
    p.add_argument("--url", default=None, metavar="URL", help="restore data over HTTP")
    p.add_argument("--prefix", default=None, metavar="NAME", help="image name prefix (NAME-1.iso)")
    p.add_argument("--ipconf", default=None, metavar="DEV:...", help="ipconf= for every machine")
    p.add_argument("--mac", action="append", default=[], metavar="MAC[=IPCONF]",
                   help="also write pxelinux.cfg/01-MAC for this machine (repeatable)")
    p.add_argument("--server", default=None, metavar="ADDR",
                   help="address of the TFTP server, for the dnsmasq snippet")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args = list(argv)
    # No verb means build: `compose-initrd --kernel 6.x --all-nics -o initrd.img`.
    first = next((a for a in args if a != "--debug"), None)
    if first not in VERBS and first not in ("-h", "--help", "--version"):
        idx = args.index(first) if first is not None else len(args)
        args.insert(idx, "build")
    return make_parser().parse_args(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = parse_args(argv)
        if args.verb in ("capture", "layout"):
            from initrd_composer.cli import capture_verb  # noqa: PLC0415

            return capture_verb.run(args)
        from initrd_composer.cli import image_verbs as verbs  # noqa: PLC0415 - keeps --help fast

        return verbs.run_verb(args)
    except UsageError as exc:
        _error(exc.message, exc.hint)
        return 2
    except ComposeError as exc:
        if debug:
            traceback.print_exc()
        _error(exc.message, exc.hint or "rerun with --debug for details")
        return 1
    except ModuleDbError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc), "reinstall the kernel package or run depmod")
        return 1
    except KeyboardInterrupt:
        _error("interrupted", "")
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if debug:
            traceback.print_exc()
        _error(f"internal error: {exc!r}", "rerun with --debug and report the traceback")
        return 1


def _error(message: str, hint: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    if hint:
        print(f"{PROG}: hint: {hint}", file=sys.stderr)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
