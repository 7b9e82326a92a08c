"""The few system calls Python's os module lacks, through ctypes on the C library."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

SYS_FINIT_MODULE = 313  # x86_64
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
RB_POWER_OFF = 0x4321FEDC
RB_AUTOBOOT = 0x01234567
MNT_DETACH = 0x2  # umount2: detach now, free when the last user is gone


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    ret = _libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                      data.encode() if data else None)
    _check(ret, f"mount {fstype} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def finit_module(fd: int, params: str = "") -> None:
    ret = _libc.syscall(SYS_FINIT_MODULE, fd, params.encode(), 0)
    _check(ret, "finit_module")


def reboot(cmd: int) -> None:
    os.sync()
    _check(_libc.reboot(ctypes.c_int(cmd)), "reboot")
