"""The media verbs: iso, pxe, obdr.  Each places one initrd (built now, or --initrd) and
prints its sha256, so the same bytes can be checked on every medium of a run."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from initrd_composer.atomic_output import check_output_dir
from initrd_composer.errors import ComposeError, UsageError
from initrd_composer.media.boot_menus import MenuSpec, check_words, parse_serial
from initrd_composer.media.loader_files import LoaderFiles
from initrd_composer.media.payload import (
    BootPayload,
    find_vmlinuz,
    initrd_kernel_version,
    payload_from_files,
)

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# Nominal capacities of the usual discs, in bytes (what burning software accepts).
MEDIA_SIZES = {"cd": 700 * 2**20, "dvd": 4_700_000_000, "dvd-dl": 8_500_000_000, "bd": 25_000_000_000}


def parse_size(text: str) -> int | None:
    """`none`, a medium name (cd, dvd, dvd-dl, bd) or a size: 4G, 700M, 512K, 1234."""
    text = text.strip()
    if text.lower() == "none":
        return None
    if text.lower() in MEDIA_SIZES:
        return MEDIA_SIZES[text.lower()]
    number, unit = text.rstrip("KMGTkmgtiBb"), text[len(text.rstrip("KMGTkmgtiBb")):]
    unit = unit.upper().removesuffix("B").removesuffix("I")
    if not number.isdigit() or unit not in _UNITS:
        raise UsageError(f"bad size {text!r}", f"give bytes, 700M, 4G, or one of {', '.join(MEDIA_SIZES)}")
    return int(number) * _UNITS[unit]


def menu_spec(args: argparse.Namespace) -> MenuSpec:
    return MenuSpec(
        default=args.default_mode,
        timeout_s=args.timeout,
        serial=parse_serial(args.serial),
        extra=check_words(tuple(args.append.split()), "--append"),
    )


def _data_dir(args: argparse.Namespace) -> Path | None:
    data: Path | None = args.data
    if data is not None and not data.is_dir():
        raise ComposeError(f"--data {data}: not a directory", "give the directory of restore data")
    if data is not None:
        _refuse_unfinished_sets(data)
    return data


def _refuse_unfinished_sets(data: Path) -> None:
    """A restore set the capture did not finish (its layout there, its manifest, written last,
    not) would be refused by every restore: not worth a disc or a tape."""
    from initrd_composer.boot.restore_set.layout import LAYOUT_NAME  # noqa: PLC0415
    from initrd_composer.boot.restore_set.manifest import MANIFEST_NAME  # noqa: PLC0415

    for where in [data, *sorted(p for p in data.iterdir() if p.is_dir())]:
        if (where / LAYOUT_NAME).is_file() and not (where / MANIFEST_NAME).is_file():
            raise ComposeError(f"--data {data}: the restore set in {where} has no {MANIFEST_NAME} "
                               "(its capture did not finish)",
                               "capture the machine again into that directory")  # fmt: skip


_ON_OFF = {True: "on", False: "off", None: "as the drive had it"}
# Builds the initrd into a scratch directory: (its path, its sha256).
Builder = Callable[[argparse.Namespace, Path], tuple[Path, str]]


@contextmanager
def payload(args: argparse.Namespace, build: Builder) -> Iterator[BootPayload]:
    """The initrd to place: --initrd as given, or one built now into a scratch directory
    (removed afterwards: the medium holds the copy)."""
    if args.initrd is not None:
        yield payload_from_files(args.initrd, args.vmlinuz, args.root)
        return
    with tempfile.TemporaryDirectory(prefix="initrd-composer-media-") as scratch:
        initrd, sha256 = build(args, Path(scratch))  # hashed as it was written
        version = initrd_kernel_version(initrd)
        kernel = find_vmlinuz(version, args.root, args.vmlinuz)
        yield BootPayload(version, kernel, initrd, sha256)


def _report(kind: str, where: Path | str, placed: BootPayload) -> None:
    print(f"{kind} {where}: kernel {placed.kernel_version} ({placed.vmlinuz}), "
          f"initrd {placed.initrd_size / 2**20:.1f} MiB")
    print(f"sha256 {placed.initrd_sha256}  initrd.img")


def iso(args: argparse.Namespace, build: Builder) -> int:
    from initrd_composer.media.iso_image import ISO_LOADERS, IsoOptions, write_iso  # noqa: PLC0415

    spec = menu_spec(args)
    loaders = LoaderFiles(args.loader_root)
    loaders.require(*ISO_LOADERS)  # before a build, not after it
    check_output_dir(args.output)
    data = _data_dir(args)
    opts = IsoOptions(volume_id=args.volume_id, capacity=parse_size(args.media_size), data=data)
    with payload(args, build) as placed:
        result = write_iso(args.output, placed, spec, loaders, opts)
        _report("iso", args.output, placed)
        print(f"{args.output}: {result.size / 2**20:.1f} MiB, BIOS + UEFI (Secure Boot), hybrid USB"
              + (f", data {result.data_bytes / 2**20:.1f} MiB from {data}" if data else ""))
    return 0


def pxe(args: argparse.Namespace, build: Builder) -> int:
    from initrd_composer.media.pxe_tree import PXE_LOADERS, PxeOptions, write_pxe_tree  # noqa: PLC0415

    spec = menu_spec(args)
    loaders = LoaderFiles(args.loader_root)
    loaders.require(*PXE_LOADERS)
    opts = PxeOptions.from_args(args)
    with payload(args, build) as placed:
        tree = write_pxe_tree(args.output, placed, spec, loaders, opts)
        _report("pxe", args.output, placed)
    print(f"{tree.path}: {len(tree.files)} files; default entry: {tree.cmdline}")
    print(f"{tree.dnsmasq_conf}: proxy-DHCP + TFTP for an existing dnsmasq (see docs/pxe.md)")
    return 0


def obdr(args: argparse.Namespace, build: Builder) -> int:
    from initrd_composer.media.iso_image import ISO_LOADERS, IsoOptions, write_iso  # noqa: PLC0415
    from initrd_composer.media.obdr_writer import write_obdr  # noqa: PLC0415

    spec = menu_spec(args)
    loaders = LoaderFiles(args.loader_root)
    loaders.require(*ISO_LOADERS)
    data = _data_dir(args)
    named = any(word == "obdr" or word.startswith("tapedev=") for word in spec.extra)
    if data is not None and not named:
        # Booted from the drive in CD-ROM emulation, the image must switch it back and read
        # the restore data from the tape.
        spec = dataclasses.replace(spec, extra=(*spec.extra, "obdr"))
    capacity = parse_size(args.capacity)
    if args.block_size <= 0 or args.block_size % 512:
        raise UsageError(f"bad --block-size {args.block_size}", "give a multiple of 512, e.g. 65536")
    with payload(args, build) as placed, tempfile.TemporaryDirectory(prefix="initrd-composer-obdr-") as tmp:
        # The tape's boot file is an ordinary rescue ISO (no data on it: the data is file 3).
        iso_path = Path(tmp) / "rescue.iso"
        write_iso(iso_path, placed, spec, loaders, IsoOptions(volume_id=args.volume_id))
        result = write_obdr(args.output, iso_path, data, block_size=args.block_size, capacity=capacity)
        _report("obdr", args.output, placed)
    for f in result.files:
        print(f"tape file {f.index}: {f.role}, {f.bytes} bytes in {f.blocks} blocks of {f.block_size}, "
              f"compression {_ON_OFF[f.compression]}")
    print(f"sha256 {result.iso_sha256}  boot ISO (tape file 1)")
    if result.data_sha256 is not None:
        print(f"sha256 {result.data_sha256}  data (tape file 2, {result.data_tar_bytes} bytes of tar)")
    for note in result.notes:
        print(f"compose-initrd: note: {note}", file=sys.stderr)
    return 0


def media_args(p: argparse.ArgumentParser, *, data: bool) -> None:
    """Options every media verb shares, after the build options."""
    p.add_argument("--initrd", type=Path, default=None, metavar="FILE",
                   help="place this initrd (built by compose-initrd) instead of building one")
    p.add_argument("--vmlinuz", type=Path, default=None, metavar="FILE",
                   help="kernel image (default ROOT/boot/vmlinuz-VERSION of the initrd's kernel)")
    p.add_argument("--loader-root", type=Path, default=Path("/"), metavar="DIR",
                   help="take syslinux, shim and GRUB from this root (default /)")
    p.add_argument("--default-mode", default="interactive",
                   help="menu entry booted after the timeout (default interactive)")
    p.add_argument("--timeout", type=int, default=10, help="menu timeout in seconds (0: wait)")
    p.add_argument("--serial", default="ttyS0,115200", help="serial console ttySN[,SPEED] or none")
    p.add_argument("--append", default="", metavar="WORDS", help="more kernel command line words")
    if data:
        p.add_argument("--data", type=Path, default=None, metavar="DIR", help="restore data to carry")
        p.add_argument("--volume-id", default="RESCUE", help="ISO volume label (default RESCUE)")
