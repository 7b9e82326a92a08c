"""scripts/bench's restore-set stage (capture and restore throughput against GNU tar): the pure
parts on hand-made runs, the report and the splice into BENCHMARKS.md, and
`scripts/bench --quick --only restore-set` for real (root: loop devices and mounts), so the
stage cannot rot. The numbers are not compared with anything (the machine is shared); the
run must measure every command, verify our restore, and write OUT/quick.*, not BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.bench_loader import KVER, MACHINE, bench, bench_report, bench_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_restore_report
import bench_restore_set
from bench_restore_set import Filesystem, Member, RestoreSetBench, Run, TreeBench

ROOT = Path(__file__).resolve().parent.parent
FILESYSTEMS = (Filesystem("/", 300_000_000, 9000, 12000), Filesystem("/boot", 50_000_000, 5, 9),
               Filesystem("/usr/lib/modules", 450_000_000, 4000, 4400))  # fmt: skip
CAPTURE_PARTS = {"archive root": 2.0, "archive boot": 0.3, "archive usr-lib-modules": 2.2,
                 "layout and the rest": 0.5}  # fmt: skip
RESTORE_PARTS = {"extract root": 1.2, "verify root": 0.4, "extract boot": 0.2, "verify boot": 0.1,
                 "extract usr-lib-modules": 1.3, "verify usr-lib-modules": 0.4}  # fmt: skip


def _run(tool: str, seconds: float, rss_mib: int, **extra: Any) -> Any:
    return Run(tool, seconds, 0.1, rss_mib * 1024, (rss_mib + 1) * 1024, seconds * 1.5, **extra)


def _tree(label: str = "whole tree", rss_mib: int = 90) -> TreeBench:
    runs = []
    for jitter in (0.0, 0.2, -0.1):  # medians: 5.0, 4.0, 3.0, 2.0, 2.5 s
        runs += [
            _run("ours-capture", 5.0 + jitter, rss_mib, output_bytes=260_000_000, parts=CAPTURE_PARTS),
            _run("tar-c", 4.0 + jitter, 50, output_bytes=250_000_000),
            _run("tar-c-T0", 3.0 + jitter, 70, output_bytes=250_000_000),
            _run("ours-restore", 2.0 + jitter, rss_mib // 2, parts=RESTORE_PARTS),
            _run("tar-x", 2.5 + jitter, 6),
        ]
    return TreeBench(label, FILESYSTEMS, tuple(runs), ("/: etc/x: mode 0600 != 0644",))


def _bench() -> Any:
    return RestoreSetBench("a hand-made tree", bench_restore_set.commands(), "mkfs.ext4 FILE",
                           (_tree(), _tree("small sample", 80)))  # fmt: skip


def _report(**extra: Any) -> Any:
    return bench_results.build_report(KVER, "scripts/bench --only restore-set", MACHINE, [], **extra)


def test_choose_members_spreads_the_data_and_keeps_hard_links_whole() -> None:
    members = [Member("."), Member("./a")]
    members += [Member(f"./a/f{i}", 100, "file") for i in range(10)]
    members += [Member("./a/link0", 0, "hardlink", "./a/f0"), Member("./a/link9", 0, "hardlink", "./a/f9")]
    assert bench_restore_set.choose_members(members, None) == members
    assert bench_restore_set.choose_members(members, 5000) == members
    half = bench_restore_set.choose_members(members, 500)
    files = [m.name for m in half if m.kind == "file"]
    assert len(files) == 5 and files[0] != "./a/f0" and files[-1] == "./a/f9"  # spread, not the first five
    assert [m.name for m in half if m.kind != "file"] == [".", "./a", "./a/link9"]  # link0's target is out


def test_filesystems_of_the_tree() -> None:
    names = (".", "./boot", "./bootx/a", "./usr/lib/x", "./usr/lib/modules/6/k.ko")
    assert [bench_restore_set.mount_of(n) for n in names] == ["", "boot", "", "", "usr/lib/modules"]
    members = [Member("."), Member("./boot"), Member("./boot/vmlinuz", 7, "file"),
               Member("./usr/lib/modules/a.ko", 5, "file")]  # fmt: skip
    plan = bench_restore_set.plan_filesystems(members)
    assert [(f.mountpoint, f.name, f.data_bytes, f.files, f.entries) for f in plan] == [
        ("/", "root", 0, 0, 1), ("/boot", "boot", 7, 1, 2), ("/usr/lib/modules", "usr-lib-modules", 5, 1, 1)]
    assert all(f.size_mib >= 64 and f.inodes > f.entries for f in plan)


def test_targets_must_reach_their_limits() -> None:
    assert bench_results.Target("t", 0.9, 0.9, at_least=True).verdict == "PASS"
    assert bench_results.Target("t", 0.89, 0.9, at_least=True).verdict == "MISS"
    rs = _bench()
    assert rs.capture_ratio == pytest.approx(4.0 / 5.0) and rs.restore_ratio == pytest.approx(2.5 / 2.0)
    capture, restore = _report(restore_set=rs).targets
    assert (capture.verdict, capture.limit, restore.verdict, restore.limit) == ("MISS", 0.9, "PASS", 1.0)
    assert bench.parse_args(["--only", "restore-set"]).stages == ("restore-set",)
    assert bench.parse_args(["--quick", "--only", "restore-set,nfs"]).stages == ("nfs", "restore-set")
    assert bench.parse_args(["--only", "restore-set", "--splice"]).splice
    with pytest.raises(SystemExit):
        bench.parse_args(["--splice"])  # only with --only


def test_section_and_json() -> None:
    report = _report(restore_set=_bench())
    text = bench_report.render_markdown(report)
    assert f"\n{bench_restore_report.TITLE}\n" in text and text.index("## Targets") < text.index("## Capture")
    assert "| capture MB/s / tar -c --zstd MB/s | 0.800 | at least 0.900 | MISS |" in text
    assert ("| capture, ours (`compose-initrd capture`) | 5.00 | 160.0 | 7.50 | 0.10 | 156.9 | 260.0 | 90 "
            "| 91 |\n| capture, `tar -c --zstd` | 4.00 | 200.0 | 6.00 |") in text
    assert "| restore, `tar -x --zstd` | 2.50 | 320.0 |" in text
    assert "- Target: restore+verify MB/s / tar -x --zstd MB/s at least 1.000: 1.250 -> **PASS**" in text
    assert "| whole tree | 2 | tar-x | 2.70 | 4.05 |" in text and "capture 1.25, restore 0.80." in text
    assert "root 1.20 s + 0.40 s" in text and "1 difference(s): /: etc/x: mode 0600 != 0644" in text
    assert "| small sample | 800.0 | 13005 | 80 | 40 | 41 | 50 | 6 |" in text
    doc: Any = bench_report.report_json(report)
    assert doc["restore_set"]["capture_ratio"] == 0.8 and doc["targets"][1]["at_least"] is True
    assert doc["restore_set"]["trees"][0]["mb_per_s"]["ours-restore"] == 400.0


def test_splice_replaces_only_the_stage_sections() -> None:
    existing = ("# Benchmarks\n\nheader\n\n## Targets\n\n| a |\n\n### sub\n\nx\n\n"
                "## Commands\n\n```sh\nscripts/bench\n```\n")
    report = _report(restore_set=_bench())
    once = bench.splice_markdown(existing, report)
    assert once.startswith("# Benchmarks\n\nheader\n\n## Targets\n\n| a |\n\n### sub\n\nx\n\n## Capture and")
    assert once.endswith("\n```\n\n## Commands\n\n```sh\nscripts/bench\n```\n")
    assert "_Measured apart from the rest of this file: `scripts/bench --only restore-set`" in once
    again = bench.splice_markdown(once.replace("| 5.00 | 160.0 |", "| 9.99 | 1.0 |"), report)
    assert again == once  # replaced in place, not added twice
    assert bench.splice_markdown(existing, _report()) == existing  # nothing measured: unchanged


def test_splice_json(tmp_path: Path) -> None:
    full = tmp_path / "bench.json"
    assert not bench.splice_json(full, {}, ["restore-set"])
    full.write_text(json.dumps({"pxe": {"x": 1}, "restore_set": None, "targets": [
        {"name": "image size / mkinitramfs"}, {"name": "capture MB/s / tar -c --zstd MB/s", "value": 0}]}))
    doc: Any = bench_report.report_json(_report(restore_set=_bench()))
    assert bench.splice_json(full, doc, ["restore-set"])
    merged = json.loads(full.read_text())
    assert merged["pxe"] == {"x": 1} and merged["restore_set"] == json.loads(json.dumps(doc["restore_set"]))
    names = [t["name"] for t in merged["targets"]]
    assert names == ["image size / mkinitramfs", *(t["name"] for t in doc["targets"])]
    assert merged["spliced"][0]["invocation"] == "scripts/bench --only restore-set"


@pytest.mark.root
def test_bench_quick_measures_capture_and_restore(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the stage attaches loop devices and mounts: run as root"
    benchmarks = ROOT / "BENCHMARKS.md"
    before = benchmarks.stat().st_mtime_ns
    argv = [sys.executable, str(ROOT / "scripts/bench"), "--quick", "--only", "restore-set",
            "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=540, check=False)  # noqa: S603
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert benchmarks.stat().st_mtime_ns == before
    doc = json.loads((tmp_path / "quick.json").read_text())["restore_set"]
    (tree,) = doc["trees"]
    assert 30e6 < sum(f["data_bytes"] for f in tree["filesystems"]) < 70e6
    assert [f["mountpoint"] for f in tree["filesystems"]] == ["/", "/boot", "/usr/lib/modules"]
    tools = sorted(r["tool"] for r in tree["runs"])
    assert tools == ["ours-capture", "ours-restore", "tar-c", "tar-c-T0", "tar-x"]
    for r in tree["runs"]:
        assert r["seconds"] > 0 and r["cpu_seconds"] > 0 and r["max_rss_kib"] > 1000 and r["peak_pss_kib"] > 0
        assert (r["output_bytes"] > 1e6) == (r["tool"] in ("ours-capture", "tar-c", "tar-c-T0"))
    ours = {r["tool"]: r for r in tree["runs"]}
    assert set(ours["ours-capture"]["parts"]) >= {"archive root", "archive usr-lib-modules"}
    assert {"extract root", "verify root", "verify usr-lib-modules"} <= set(ours["ours-restore"]["parts"])
    assert tree["tar_check"] == []  # tar restored what our manifest lists, our verifier says
    assert all(v > 0 for v in tree["mb_per_s"].values())
    assert doc["capture_ratio"] > 0 and doc["restore_ratio"] > 0
    text = (tmp_path / "quick.md").read_text()
    assert bench_restore_report.TITLE in text and "Quick run (--quick): only restore-set" in text
    assert not (tmp_path / "restore-set").exists()  # the scratch images are gone, nothing left mounted
    assert f" {tmp_path}/" not in Path("/proc/self/mountinfo").read_text()
    print(f"bench --quick --only restore-set: {proc.stderr.strip().splitlines()[-6:]}")
