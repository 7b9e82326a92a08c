"""The machine a scripts/bench run happened on, for the Machine section: timings mean
little without the CPUs, memory, load and commit they were measured with."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from bench_common import ROOT

from initrd_composer.errors import ComposeError
from initrd_composer.runner import run


@dataclass(frozen=True)
class Machine:
    cpus: int
    cpu_model: str
    mem_mib: int
    host_kernel: str
    python: str
    commit: str  # "" outside a git checkout
    date: str
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]


def parse_cpu_model(cpuinfo: str) -> str:
    """The first `model name` of /proc/cpuinfo text ("unknown" on CPUs that have none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return "unknown"


def parse_mem_mib(meminfo: str) -> int:
    """MemTotal of /proc/meminfo text, in MiB."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ComposeError("/proc/meminfo: no MemTotal line")


def machine_facts(
    started: dt.datetime, load_start: tuple[float, float, float], proc: Path = Path("/proc")
) -> Machine:
    """The machine the run happened on; called at the end, so the load average is the final one."""
    commit = ""
    if (ROOT / ".git").exists():
        head = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False)
        dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], check=False)
        if head.returncode == 0:
            commit = head.stdout.decode().strip() + (
                " (with uncommitted changes)" if dirty.stdout.strip() else ""
            )
    return Machine(
        cpus=len(os.sched_getaffinity(0)),
        cpu_model=parse_cpu_model((proc / "cpuinfo").read_text()),
        mem_mib=parse_mem_mib((proc / "meminfo").read_text()),
        host_kernel=os.uname().release,
        python=f"{sys.executable} (Python {platform.python_version()})",
        commit=commit,
        date=started.strftime("%Y-%m-%d %H:%M UTC"),
        load_start=load_start,
        load_end=os.getloadavg(),
    )
