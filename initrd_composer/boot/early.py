"""First steps of PID 1: pseudo filesystems, console, the kernel's module helper."""

from __future__ import annotations

import os

from initrd_composer.boot.console import log, open_kmsg, open_mirrors
from initrd_composer.boot.syscalls import MS_NODEV, MS_NOEXEC, MS_NOSUID, mount

# (fstype, target, flags, data)
PSEUDO_MOUNTS = (
    ("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("sysfs", "/sys", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("devtmpfs", "/dev", MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=000"),
    ("tmpfs", "/run", MS_NOSUID | MS_NODEV, "mode=0755"),
    ("tmpfs", "/tmp", MS_NOSUID | MS_NODEV, "mode=1777"),
)
MODPROBE_HELPER = "/sbin/modprobe"


def _mounted(target: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == target for line in f)
    except OSError:
        return False


def mount_pseudo_filesystems() -> list[str]:
    """Mount what is not mounted yet; returns problems (never raises: a missing /dev/pts
    must not stop a restore)."""
    problems: list[str] = []
    for fstype, target, flags, data in PSEUDO_MOUNTS:
        try:
            os.makedirs(target, exist_ok=True)
            if target != "/proc" and _mounted(target):
                continue
            mount(fstype, target, fstype, flags, data)
        except OSError as exc:
            if exc.errno != 16:  # EBUSY: already mounted (kernel automounted devtmpfs)
                problems.append(str(exc))
    open_kmsg()
    open_mirrors()
    for link, target in (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
                         ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2")):
        if not os.path.lexists(link):
            try:
                os.symlink(target, link)
            except OSError as exc:  # shell scripts reading /dev/stdin would fail without a word
                problems.append(f"cannot link {link} -> {target}: {exc.strerror}")
    return problems


def set_modprobe_helper(path: str = MODPROBE_HELPER) -> bool:
    """Point the kernel's request_module() (crypto-*, fs-*, net-pf-*, PHY ids) at the
    image's modprobe, which reads the image's own modules.dep/modules.alias."""
    if not os.path.exists(path):
        log(f"no {path} in the image: kernel module requests will fail", 4)
        return False
    try:
        with open("/proc/sys/kernel/modprobe", "w") as f:
            f.write(path)
    except OSError as exc:
        log(f"cannot set /proc/sys/kernel/modprobe: {exc}", 4)
        return False
    return True


def base_environment() -> None:
    os.environ.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    os.environ.setdefault("HOME", "/root")
    os.environ.setdefault("TERM", "linux")
    # Interactive shells read $ENV: the rescue shell's PATH, prompt and commands (/etc/profile)
    os.environ.setdefault("ENV", "/etc/profile")
    os.umask(0o022)
