"""Step 8 of nuke: make the restored system fit the new hardware. Every failure here fails the
restore (ReaR warns and goes on when the boot loader install fails; the machine then does not
boot and nobody knows why until it is too late).

1. Device names in fstab, crypttab and GRUB's configuration are rewritten through the disk
   mapping (UUIDs, labels, LVM and md names are kept, so most need nothing).
2. The restored system's initramfs is rebuilt in a chroot with its own tool
   (`update-initramfs -u -k all` or `dracut -f --regenerate-all`), so it carries the new
   controller's driver: the old one may hold only the drivers of the old machine.
3. GRUB is reinstalled, from the restored system's own grub-install, on every target disk that
   took a saved disk GRUB was on (BIOS: `--target=i386-pc`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from initrd_composer.boot import syscalls
from initrd_composer.boot.commands import BUSYBOX, CommandResult, Runner, run_command
from initrd_composer.boot.restore import StepFailed
from initrd_composer.boot.restore.device_names import rewrite_device_names

# Files whose device names are rewritten, relative to the restored root.
NAME_FILES = ("etc/fstab", "etc/crypttab", "etc/default/grub", "boot/grub/grub.cfg", "boot/grub2/grub.cfg")
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
# Under emulation an initramfs rebuild takes minutes; a real machine takes seconds.
INITRAMFS_TIMEOUT_S = 1200.0
GRUB_TIMEOUT_S = 600.0



class FixupFailed(StepFailed):
    """A fix-up of the restored system failed."""


@dataclass
class FixupReport:
    rewritten: dict[str, list[str]] = field(default_factory=dict)  # file -> "line N: old -> new"
    commands: list[dict[str, Any]] = field(default_factory=list)  # argv, exit status, seconds

    def to_json(self) -> dict[str, Any]:
        return {"rewritten": self.rewritten, "commands": self.commands}


def rewrite_names(root: Path, mapping: Mapping[str, str], report: FixupReport) -> None:
    """Rewrite device names in NAME_FILES in place (same owner and mode; a new inode written
    and renamed over the old, so a crash leaves the old or the new file, never half of one)."""
    for rel in NAME_FILES:
        path = root / rel
        if not path.is_file() or path.is_symlink():
            continue
        text = path.read_text(errors="surrogateescape")
        new, changes = rewrite_device_names(text, mapping)
        if not changes:
            continue
        st = path.stat()
        tmp = path.with_name(f".{path.name}.initrd-composer")
        tmp.write_text(new, errors="surrogateescape")
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777)
        os.replace(tmp, path)
        report.rewritten[rel] = changes


def initramfs_argv(root: Path) -> list[str] | None:
    """The restored system's own initramfs tool, or None when it has no initramfs to rebuild."""
    if (root / "usr/sbin/update-initramfs").exists():
        return ["update-initramfs", "-u", "-k", "all"]
    if (root / "usr/bin/dracut").exists() or (root / "usr/sbin/dracut").exists():
        return ["dracut", "-f", "--regenerate-all"]
    return None


def has_initramfs(root: Path) -> bool:
    boot = root / "boot"
    return boot.is_dir() and any(p.name.startswith(("initrd.img-", "initramfs-")) for p in boot.iterdir())


def grub_argvs(bootloader: Mapping[str, Any], mapping: Mapping[str, str]) -> list[list[str]]:
    """grub-install for every saved BIOS-GRUB disk, onto the disk it was restored to."""
    argvs = []
    for disk in bootloader.get("bios_grub_disks") or []:
        path = disk if str(disk).startswith("/dev/") else f"/dev/{disk}"
        target = mapping.get(path)
        if target is None:
            raise FixupFailed(
                f"GRUB was on {path}, which no target disk took",
                "install a boot loader by hand from the shell",
            )
        argvs.append(["grub-install", "--target=i386-pc", target])
    return argvs


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/dev, /proc, /sys and a /run for the restored system's tools; unmounted in reverse."""
    done: list[str] = []
    try:
        for kind, source, rel, flags in (
            ("", "/dev", "dev", syscalls.MS_BIND),
            ("proc", "proc", "proc", 0),
            ("sysfs", "sysfs", "sys", 0),
            ("tmpfs", "tmpfs", "run", 0),
        ):
            where = root / rel
            where.mkdir(exist_ok=True)
            syscalls.mount(source, str(where), kind, flags)
            done.append(str(where))
        yield
    finally:
        for mounted_at in reversed(done):
            with contextlib.suppress(OSError):
                syscalls.umount(mounted_at, syscalls.MNT_DETACH)


def run_in_chroot(
    root: Path, argv: Sequence[str], timeout_s: float, report: FixupReport, runner: Runner = run_command
) -> CommandResult:
    import time  # noqa: PLC0415

    started = time.monotonic()
    result = runner([BUSYBOX, "chroot", str(root), *argv], timeout_s=timeout_s, env=CHROOT_ENV)
    report.commands.append(
        {"argv": list(argv), "status": result.returncode, "seconds": round(time.monotonic() - started, 1)}
    )
    if not result.ok:
        raise FixupFailed(
            f"{' '.join(argv)} in the restored system failed: {result.describe()}",
            f"fix it from the shell (the restored system is mounted at {root}), then reboot",
        )
    return result


def run_fixups(
    root: Path,
    layout: Mapping[str, Any],
    mapping: Mapping[str, str],
    log: Callable[[str], None],
    runner: Runner = run_command,
) -> FixupReport:
    """All three steps on the restored tree mounted (nested, as it will boot) at `root`."""
    report = FixupReport()
    rewrite_names(root, mapping, report)
    for rel, changes in report.rewritten.items():
        log(f"restore: {rel}: {'; '.join(changes)}")
    initramfs = initramfs_argv(root)
    grub = grub_argvs(layout.get("bootloader") or {}, mapping)
    if initramfs is None and has_initramfs(root):
        raise FixupFailed(
            "the restored system has an initramfs but neither update-initramfs nor dracut",
            "rebuild it by hand from the shell for the new machine's disk controller",
        )
    with chroot_mounts(root):
        if initramfs is not None and has_initramfs(root):
            log(f"restore: rebuilding the restored system's initramfs: {' '.join(initramfs)}")
            run_in_chroot(root, initramfs, INITRAMFS_TIMEOUT_S, report, runner)
        for argv in grub:
            log(f"restore: installing GRUB: {' '.join(argv)}")
            run_in_chroot(root, argv, GRUB_TIMEOUT_S, report, runner)
    return report
