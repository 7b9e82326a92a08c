"""scripts/bench loaded for the tests: it has no .py suffix, so it is loaded by path, and it
imports its bench_* modules from scripts/ the way it does when run as a program (so after this
import they are importable too, and re-exported here). MACHINE: a fixed machine for rendered
reports."""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
KVER = "6.1.0-56-amd64"


def _load_bench() -> ModuleType:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    loader = SourceFileLoader("bench", str(SCRIPTS / "bench"))
    spec = importlib.util.spec_from_loader("bench", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


bench = _load_bench()

import bench_alias  # noqa: E402
import bench_anchors  # noqa: E402
import bench_boot  # noqa: E402
import bench_builds  # noqa: E402
import bench_common  # noqa: E402
import bench_machine  # noqa: E402
import bench_nfs  # noqa: E402
import bench_pxe  # noqa: E402
import bench_report  # noqa: E402
import bench_results  # noqa: E402

__all__ = [
    "KVER", "MACHINE", "bench", "bench_alias", "bench_anchors", "bench_boot", "bench_builds",
    "bench_common", "bench_machine", "bench_nfs", "bench_pxe", "bench_report", "bench_results",
]  # fmt: skip

MACHINE = bench_machine.Machine(
    cpus=2,
    cpu_model="Intel(R) Xeon(R) Processor",
    mem_mib=7936,
    host_kernel=KVER,
    python="/usr/bin/python3 (Python 3.11.7)",
    commit="",
    date="2025-01-01 00:00 UTC",
    load_start=(1.0, 0.5, 0.25),
    load_end=(2.0, 1.0, 0.5),
)
