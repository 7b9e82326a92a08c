"""The bootable rescue ISO: BIOS (isolinux), UEFI (shim + signed GRUB), hybrid for USB.

Layout of the disc:

    /.disk/info               how Debian's GRUB CD image finds the disc (search --file)
    /boot/vmlinuz             the distribution's signed kernel
    /boot/initrd.img          the initrd, byte for byte
    /boot/grub/grub.cfg       menu for UEFI
    /boot/grub/efi.img        El Torito EFI image (FAT): EFI/BOOT/BOOTX64.EFI (shim),
                              grubx64.efi (signed GRUB, CD flavour), mmx64.efi
    /isolinux/isolinux.bin, ldlinux.c32, menu.c32 (+ its libraries), isolinux.cfg, boot.cat
    /data/...                 restore data (--data), when the disc carries it
    /.initrd-composer/medium.json   the marker /init finds the disc (or a stick) by

xorriso writes ISO 9660 + Rock Ridge + Joliet with an isohybrid MBR (isolinux's
isohdpfx.bin) and a GPT entry for the EFI image, so the same file boots from a CD drive
and, copied with dd, from a USB stick on BIOS and UEFI machines.

Under Secure Boot the firmware checks shim (Microsoft's signature), shim checks GRUB
and the kernel (Debian's), and the kernel, locked down, checks every module: the packed
modules keep the signatures the distribution gave them.

Reproducible: every date is SOURCE_DATE_EPOCH (default: the kernel file's mtime), the
FAT image is made with fixed ids, and the same inputs give the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from initrd_composer.atomic_output import atomic_path
from initrd_composer.boot.sources.marker import DATA_DIR, MARKER_FORMAT, MARKER_PATH, MARKER_VERSION
from initrd_composer.errors import UsageError
from initrd_composer.media.boot_menus import SYSLINUX_MENU_FILES, MenuSpec, grub_cfg, syslinux_cfg
from initrd_composer.media.capacity import check_capacity, check_free_space
from initrd_composer.media.loader_files import LoaderFiles
from initrd_composer.media.payload import BootPayload
from initrd_composer.runner import run
from initrd_composer.source_date import source_date_epoch

SECTOR = 2048
EFI_FILES = {"BOOTX64.EFI": "shimx64.efi", "grubx64.efi": "gcdx64.efi", "mmx64.efi": "mmx64.efi"}
BIOS_LOADERS = ("isolinux.bin", "isohdpfx.bin", "ldlinux.c32", *SYSLINUX_MENU_FILES)
ISO_LOADERS = (*BIOS_LOADERS, *EFI_FILES.values())
# ISO 9660 metadata, boot catalogue, El Torito images, alignment: generous, checked after.
OVERHEAD = 4 * 2**20


@dataclass(frozen=True)
class IsoOptions:
    volume_id: str = "RESCUE"
    capacity: int | None = None  # bytes the medium holds; None: no limit
    data: Path | None = None

    def __post_init__(self) -> None:
        vid = self.volume_id
        if not vid or len(vid) > 32 or not all(c.isalnum() or c in "_-" for c in vid):
            raise UsageError(f"bad volume id {vid!r}", "use up to 32 letters, digits, - or _")


@dataclass(frozen=True)
class IsoResult:
    path: Path
    size: int
    data_bytes: int


def _sectors(size: int) -> int:
    return -(-size // SECTOR) * SECTOR


def tree_bytes(root: Path) -> int:
    """What a directory takes on an ISO: each file rounded up to whole sectors."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        total += SECTOR  # its directory record block
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                total += _sectors(path.stat().st_size)
    return total


_TOO_BIG = ("give --media-size for a bigger medium (dvd-dl, bd, 8G, none), or leave the data off "
            "(--data) and restore over the network")


def _fat_image(dest: Path, files: dict[str, Path], epoch: int) -> None:
    """The El Torito EFI image: FAT with EFI/BOOT/*, fixed volume id and dates."""
    payload = sum(f.stat().st_size for f in files.values())
    size_kib = max(1440, (payload * 11 // 10 + 256 * 1024) // 1024)  # FAT tables, dirs, slack
    env = {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1"}
    run(["mkfs.fat", "-C", "--invariant", "-i", "52455343", "-n", "EFIBOOT", dest, str(size_kib)], env=env)
    run(["mmd", "-i", dest, "::/EFI", "::/EFI/BOOT"], env=env)
    for name, src in sorted(files.items()):
        run(["mcopy", "-m", "-i", dest, src, f"::/EFI/BOOT/{name}"], env=env)


def medium_marker(payload: BootPayload, opts: IsoOptions) -> str:
    """The marker /init finds its medium by (boot/sources/removable.py checks it): the label
    must be the disc's own, so a copy of the file on another disc is not taken for ours."""
    doc = {"format": MARKER_FORMAT, "version": MARKER_VERSION, "volume_id": opts.volume_id,
           "kernel": payload.kernel_version, "initrd_sha256": payload.initrd_sha256,
           "data": DATA_DIR if opts.data is not None else None}  # fmt: skip
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


def _stage(staging: Path, payload: BootPayload, spec: MenuSpec, loaders: dict[str, Path], epoch: int, *,
           opts: IsoOptions) -> None:  # fmt: skip
    """The small files of the disc; kernel, initrd and data are grafted from where they are."""
    marker = staging / MARKER_PATH
    marker.parent.mkdir()
    marker.write_text(medium_marker(payload, opts))
    (staging / ".disk").mkdir()
    (staging / ".disk/info").write_text(f"initrd-composer rescue, kernel {payload.kernel_version}\n")
    (staging / "isolinux").mkdir()
    for name in ("isolinux.bin", "ldlinux.c32", *SYSLINUX_MENU_FILES):
        shutil.copyfile(loaders[name], staging / "isolinux" / name)
    (staging / "isolinux/isolinux.cfg").write_text(syslinux_cfg(spec, "/boot/vmlinuz", "/boot/initrd.img"))
    grub = staging / "boot/grub"
    grub.mkdir(parents=True)
    (grub / "grub.cfg").write_text(grub_cfg(spec, "/boot/vmlinuz", "/boot/initrd.img"))
    # The EFI loaders live only in the FAT image: firmware boots the El Torito EFI entry
    # (CD) or the partition the hybrid table points at (USB), never the ISO's own tree.
    efi = staging.parent / "efi-loaders"
    efi.mkdir()
    for name, loader in EFI_FILES.items():
        shutil.copyfile(loaders[loader], efi / name)
        os.utime(efi / name, (epoch, epoch))
    _fat_image(grub / "efi.img", {name: efi / name for name in EFI_FILES}, epoch)
    for path in sorted(staging.rglob("*")):
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    os.utime(staging, (epoch, epoch))


def xorriso_argv(
    output: Path, staging: Path, payload: BootPayload, opts: IsoOptions, *, mbr: Path, epoch: int
) -> list[str]:
    grafts = [f"/boot/vmlinuz={payload.vmlinuz}", f"/boot/initrd.img={payload.initrd}"]
    if opts.data is not None:
        grafts.append(f"/{DATA_DIR}={opts.data}")
    return [
        "xorriso", "-as", "mkisofs",
        "-o", str(output),
        "-V", opts.volume_id,
        # SOURCE_DATE_EPOCH fixes the volume dates only; grafted files keep their own
        # (a rebuilt initrd's mtime would change the bytes): give every file the epoch.
        "--set_all_file_dates", f"={epoch}",
        "-iso-level", "3",  # restore data may hold files over 4 GiB
        "-r", "-J", "-joliet-long",
        "-isohybrid-mbr", str(mbr),
        "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
        "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
        "-eltorito-alt-boot",
        "-e", "boot/grub/efi.img", "-no-emul-boot", "-isohybrid-gpt-basdat",
        "-graft-points",
        str(staging),
        *grafts,
    ]  # fmt: skip


def write_iso(
    output: Path, payload: BootPayload, spec: MenuSpec, loaders: LoaderFiles, opts: IsoOptions
) -> IsoResult:
    """Write the ISO at `output` (all or nothing); errors before any byte is written when a
    loader file is missing or the data cannot fit."""
    found = loaders.require(*ISO_LOADERS)
    data_bytes = tree_bytes(opts.data) if opts.data is not None else 0
    boot_files = _sectors(payload.initrd_size) + _sectors(payload.vmlinuz.stat().st_size)
    estimate = OVERHEAD + data_bytes + boot_files
    what = f"the ISO with data from {opts.data}" if opts.data else "the ISO"
    check_capacity(estimate, opts.capacity, what, _TOO_BIG)
    epoch = source_date_epoch(payload.vmlinuz)  # else the kernel's mtime: stable for one package
    with _staging() as staging, atomic_path(output) as tmp:
        check_free_space(tmp.parent, estimate)
        _stage(staging, payload, spec, found, epoch, opts=opts)
        env = {"SOURCE_DATE_EPOCH": str(epoch)}
        run(xorriso_argv(tmp, staging, payload, opts, mbr=found["isohdpfx.bin"], epoch=epoch), env=env)
        size = tmp.stat().st_size
        check_capacity(size, opts.capacity, what, _TOO_BIG)
    return IsoResult(output, size, data_bytes)


@contextmanager
def _staging() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="initrd-composer-iso-") as tmp:
        (Path(tmp) / "tree").mkdir()
        yield Path(tmp) / "tree"
