#!/usr/bin/env python3
"""Boot a kernel + initrd under QEMU (TCG) and read its serial console line by line.

Used by scripts/demo, the benchmark and the QEMU boot tests.  The VM is stopped as soon
as the wanted line shows up, on a "Kernel panic" line, or at the timeout; qemu is always
killed before boot() returns.  No shell is involved: qemu gets an argv list and its
serial console is the pipe pair stdin/stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
PANIC_MARK = "Kernel panic"
DEFAULT_MEMORY_MB = 1024


class BootError(Exception):
    """qemu could not be started (missing binary, unreadable kernel, ...)."""


@dataclass(frozen=True)
class BootResult:
    """What one boot printed and how it ended."""

    lines: tuple[str, ...]
    matched_line: str | None  # from the `until` text to the end of that line
    elapsed: float  # wall seconds from spawning qemu to the end of reading
    exit: int | None  # qemu's own exit status; None when we had to stop it
    reason: str  # "matched", "panic", "timeout" or "exited"


@dataclass(frozen=True)
class Reply:
    """Text typed into the serial console once a line containing `trigger` appeared."""

    trigger: str
    text: str


def qemu_argv(
    kernel: Path,
    initrd: Path,
    append: str,
    devices: Sequence[str] = (),
    *,
    memory_mb: int = DEFAULT_MEMORY_MB,
    qemu: str = QEMU,
) -> list[str]:
    """The qemu command line for a direct kernel boot (firmware_argv plus -kernel).

    `no_timer_check` is added, as libguestfs does for TCG: on a loaded host the kernel's
    IO-APIC timer check can miss its ticks and panic ("IO-APIC + timer doesn't work!")."""
    boot = ["-kernel", os.fspath(kernel), "-initrd", os.fspath(initrd), "-append", f"{append} no_timer_check"]
    return firmware_argv([*boot, *devices], memory_mb=memory_mb, qemu=qemu)


def firmware_argv(
    devices: Sequence[str], *, memory_mb: int = DEFAULT_MEMORY_MB, qemu: str = QEMU
) -> list[str]:
    """The qemu command line: TCG (KVM is unusable here), no display, serial on stdio.

    -nodefaults drops the implicit NIC, VGA and drives so that the guest sees exactly
    the `devices` given; -no-reboot turns a guest reboot/panic-reboot into a qemu exit.
    Without -kernel in `devices` the firmware boots (SeaBIOS unless they carry
    ovmf_args): a CD, a disk or the network, the serial console read as for boot().
    """
    return [
        qemu,
        "-accel", "tcg",
        "-m", str(memory_mb),
        "-nodefaults",
        "-display", "none",
        "-no-reboot",
        "-serial", "stdio",
        "-monitor", "none",
        *devices,
    ]  # fmt: skip


class _ConsoleReader:
    """Splits the bytes qemu writes into console lines (CR and ANSI-free enough)."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[str]:
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        return [_decode(raw) for raw in complete]

    def flush(self) -> list[str]:
        rest, self._partial = self._partial, b""
        return [_decode(rest)] if rest else []


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").replace("\r", "")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets qemu exit cleanly; SIGKILL if it does not within a few seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def boot(
    kernel: Path,
    initrd: Path,
    append: str,
    devices: Sequence[str] = (),
    *,
    timeout: float = 120.0,
    until: str = "hwreport:",
    replies: Sequence[Reply] = (),
    on_line: Callable[[str], None] | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    qemu: str = QEMU,
) -> BootResult:
    """Boot KERNEL+INITRD directly (-kernel), stream the console, stop at `until`.

    `replies` are typed into the console in order, each once, when a complete line
    containing its trigger appears (the tty buffers input until the shell reads it).
    `on_line` sees every console line as it arrives (the demo echoes them).
    """
    argv = qemu_argv(kernel, initrd, append, devices, memory_mb=memory_mb, qemu=qemu)
    for path in (kernel, initrd):
        if not Path(path).is_file():
            raise BootError(f"{path}: no such file")
    return run_console(argv, timeout=timeout, until=until, replies=replies, on_line=on_line)


OVMF_DIR = Path("/usr/share/OVMF")


def ovmf_args(vars_copy: Path, *, secure_boot: bool = False, ovmf_dir: Path = OVMF_DIR) -> list[str]:
    """Firmware arguments for a UEFI boot with Debian's OVMF (package ovmf).

    `vars_copy` becomes the VM's writable NVRAM: it is created from the matching template
    (with Microsoft's keys enrolled and Secure Boot enforced when `secure_boot`).  The
    Secure Boot build needs SMM, which needs the q35 machine.
    """
    code = ovmf_dir / ("OVMF_CODE_4M.ms.fd" if secure_boot else "OVMF_CODE_4M.fd")
    template = ovmf_dir / ("OVMF_VARS_4M.ms.fd" if secure_boot else "OVMF_VARS_4M.fd")
    for path in (code, template):
        if not path.is_file():
            raise BootError(f"{path}: no such file (install ovmf)")
    vars_copy.write_bytes(template.read_bytes())
    machine = ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]
    return [
        *(machine if secure_boot else ["-machine", "q35"]),
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
    ]  # fmt: skip


def boot_firmware(
    devices: Sequence[str],
    *,
    timeout: float = 120.0,
    until: str = "hwreport:",
    replies: Sequence[Reply] = (),
    on_line: Callable[[str], None] | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    qemu: str = QEMU,
) -> BootResult:
    """Boot through the firmware and the boot loader on `devices` (ISO, USB disk, PXE)."""
    argv = firmware_argv(devices, memory_mb=memory_mb, qemu=qemu)
    return run_console(argv, timeout=timeout, until=until, replies=replies, on_line=on_line)


def run_console(
    argv: Sequence[str],
    *,
    timeout: float,
    until: str,
    replies: Sequence[Reply] = (),
    on_line: Callable[[str], None] | None = None,
) -> BootResult:
    """Run qemu `argv` (serial on stdio), stream its console, stop at `until`."""
    qemu = argv[0]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except FileNotFoundError as exc:
        raise BootError(f"cannot run {qemu}: not found (install qemu-system-x86)") from exc
    assert proc.stdout is not None and proc.stdin is not None
    lines: list[str] = []
    pending = list(replies)
    reader = _ConsoleReader()
    matched: str | None = None
    reason = "timeout"
    selector = selectors.DefaultSelector()
    try:
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = start + timeout
        while matched is None and reason == "timeout":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not selector.select(timeout=min(remaining, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            new = reader.feed(chunk) if chunk else reader.flush()
            for line in new:
                lines.append(line)
                if on_line is not None:
                    on_line(line)
                if pending and pending[0].trigger in line:
                    try:
                        proc.stdin.write(pending.pop(0).text.encode())
                        proc.stdin.flush()
                    except BrokenPipeError:
                        pass  # qemu is gone; the EOF on stdout ends the loop
                if until in line:
                    matched = line[line.index(until) :]
                    reason = "matched"
                    break
                if PANIC_MARK in line:
                    reason = "panic"
                    break
            if not chunk and reason == "timeout":
                reason = "exited"
    finally:
        selector.close()
        _stop(proc)
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except BrokenPipeError:
                pass
    exit_status = proc.returncode if reason == "exited" else None
    return BootResult(tuple(lines), matched, time.monotonic() - start, exit_status, reason)


def summarize_hwreport(matched_line: str) -> list[str]:
    """A few human lines from a `hwreport: {json}` console line (the /init contract)."""
    payload = matched_line.split(":", 1)[1].strip()
    try:
        report = json.loads(payload)
    except json.JSONDecodeError as exc:
        return [f"hwreport is not valid JSON ({exc.msg} at column {exc.colno})"]
    if not isinstance(report, dict):
        return ["hwreport is not a JSON object"]
    out = [f"devices: {len(report.get('devices') or [])}"]
    for nic in report.get("netdevs") or []:
        out.append(f"netdev {nic.get('name')} mac={nic.get('mac')} driver={nic.get('driver')}")
    for blk in report.get("blockdevs") or []:
        out.append(
            f"blockdev {blk.get('name')} type={blk.get('type')} driver={blk.get('driver')}"
            f" size={blk.get('size_bytes')}"
        )
    missing = report.get("missing") or []
    out.append(f"missing (no module in image): {len(missing)}")
    out.extend(f"  {alias}" for alias in missing)
    timings = report.get("timings")
    if isinstance(timings, dict):
        out.append("timings: " + ", ".join(f"{k}={v}" for k, v in sorted(timings.items())))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qemu_boot.py",
        description="Boot KERNEL+INITRD under QEMU/TCG, print the serial console until a line.",
    )
    parser.add_argument("--kernel", type=Path, required=True)
    parser.add_argument("--initrd", type=Path, required=True)
    parser.add_argument("--append", default="console=ttyS0")
    parser.add_argument("--until", default="hwreport:", help="stop at the line containing this")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MB, help="guest MiB")
    parser.add_argument("--quiet", action="store_true", help="do not echo the console")
    parser.add_argument("--summary", action="store_true", help="digest the hwreport line")
    parser.add_argument("qemu_args", nargs="*", help="extra qemu arguments (after --)")
    args = parser.parse_args(argv)

    def echo(line: str) -> None:
        print(line, flush=True)

    try:
        result = boot(
            args.kernel,
            args.initrd,
            args.append,
            args.qemu_args,
            timeout=args.timeout,
            until=args.until,
            on_line=None if args.quiet else echo,
            memory_mb=args.memory,
        )
    except BootError as exc:
        print(f"qemu_boot: error: {exc}", file=sys.stderr)
        return 1
    print(f"qemu_boot: {result.reason} after {result.elapsed:.1f}s ({len(result.lines)} lines)")
    if result.matched_line is None:
        if result.lines:
            print(f"qemu_boot: last console line: {result.lines[-1]}", file=sys.stderr)
        return 1
    if args.summary:
        for line in summarize_hwreport(result.matched_line):
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
