"""The capture and restore section of BENCHMARKS.md, and its JSON, from bench_restore_set's data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from statistics import median

from bench_restore_set import CAPTURES, RESTORES, SAMPLE_S, RestoreSetBench, TreeBench
from bench_results import Report, Target, restore_set_targets

TITLE = "## Capture and restore throughput (restore set vs GNU tar)"
LABELS = {
    "ours-capture": "capture, ours (`compose-initrd capture`)",
    "tar-c": "capture, `tar -c --zstd`",
    "tar-c-T0": "capture, `tar -c -I 'zstd -T0'`",
    "ours-restore": "restore + verify, ours (`extract_and_verify`)",
    "tar-x": "restore, `tar -x --zstd`",
}


def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f}"


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def _cpu(t: TreeBench, tool: str) -> float:
    return float(median(r.cpu_seconds for r in t.of(tool)))


def _files(t: TreeBench) -> int:
    return sum(f.files for f in t.filesystems)


def summary_rows(t: TreeBench) -> list[str]:
    rows = [
        "| median | wall s | MB/s | CPU s | sync after s | MB/s with the sync | archives MB "
        "| max RSS MiB | tree Pss MiB |",
        "|---|" + "---:|" * 8,
    ]
    for tool in (*CAPTURES, *RESTORES):
        runs = t.of(tool)
        out = _mb(median(r.output_bytes for r in runs)) if tool in CAPTURES else ""
        cpu = median(r.cpu_seconds for r in runs)
        rows.append(
            f"| {LABELS[tool]} | {t.seconds(tool):.2f} | {t.rate(tool):.1f} | {cpu:.2f} "
            f"| {median(r.sync_seconds for r in runs):.2f} | {t.rate(tool, sync=True):.1f} | {out} "
            f"| {_mib(max(r.max_rss_kib for r in runs))} | {_mib(max(r.peak_pss_kib for r in runs))} |"
        )
    return rows


def time_lines(t: TreeBench) -> list[str]:
    """Where our time went (medians): the capture's archives as it logs them, the restore's
    children's extraction and verification per filesystem."""
    capture = t.of("ours-capture")[0].parts
    parts = ", ".join(f"{name} {t.part('ours-capture', name):.2f} s" for name in capture)
    restore = t.of("ours-restore")[0].parts
    names = [n.removeprefix("extract ") for n in restore if n.startswith("extract ")]
    per_fs = ", ".join(f"{n} {t.part('ours-restore', 'extract ' + n):.2f} s + "
                       f"{t.part('ours-restore', 'verify ' + n):.2f} s" for n in names)  # fmt: skip
    longest = max(sum(t.part("ours-restore", f"{step} {n}") for step in ("extract", "verify")) for n in names)
    return [
        f"- Where our capture's time goes (median run), each archive's child process side by side, as "
        f"many at once as there are CPUs: {parts} (the rest: Python's start, the layout's tools).",
        f"- Where our restore's time goes (median run), extraction + verification per filesystem, side by "
        f"side: {per_fs}; the rest of the wall time, {t.seconds('ours-restore') - longest:.2f} s, is the "
        "start, reading the manifest and the children's start and end.",
    ]


def _peak(t: TreeBench, tool: str, *, pss: bool = False) -> str:
    return _mib(max(r.peak_pss_kib if pss else r.max_rss_kib for r in t.of(tool)))


def memory_rows(rs: RestoreSetBench) -> list[str]:
    rows = [
        "| tree | MB of data | files | ours capture max RSS MiB | ours restore max RSS MiB "
        "| ours restore tree Pss MiB | tar -c --zstd max RSS MiB | tar -x --zstd max RSS MiB |",
        "|---|" + "---:|" * 7,
    ]
    for t in rs.trees:
        rows.append(f"| {t.label} | {_mb(t.data_bytes)} | {_files(t)} | {_peak(t, 'ours-capture')} "
                    f"| {_peak(t, 'ours-restore')} | {_peak(t, 'ours-restore', pss=True)} "
                    f"| {_peak(t, 'tar-c')} | {_peak(t, 'tar-x')} |")  # fmt: skip
    return rows


def run_rows(rs: RestoreSetBench) -> list[str]:
    rows = ["| tree | run | command | wall s | CPU s | sync s | max RSS MiB | tree Pss MiB | archives MB |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for t in rs.trees:
        for i, r in enumerate(t.runs):
            out = _mb(r.output_bytes) if r.output_bytes else ""
            n = sum(1 for other in t.runs[:i] if other.tool == r.tool) + 1
            rows.append(f"| {t.label} | {n} | {r.tool} | {r.seconds:.2f} | {r.cpu_seconds:.2f} "
                        f"| {r.sync_seconds:.2f} | {_mib(r.max_rss_kib)} | {_mib(r.peak_pss_kib)} "
                        f"| {out} |")  # fmt: skip
    return rows


def section_lines(rs: RestoreSetBench, target_lines: list[str]) -> list[str]:
    t = rs.trees[0]
    fss = ", ".join(f"{f.mountpoint} {_mb(f.data_bytes)} MB in {f.files} files" for f in t.filesystems)
    shown = "; ".join(t.tar_check[:5]) + ("; ..." if len(t.tar_check) > 5 else "")
    check = f"{len(t.tar_check)} difference(s): {shown}" if t.tar_check else "no difference"
    return [
        f"{TITLE}\n",
        f"The tree: {rs.source}: {_mb(t.data_bytes)} MB of file data (regular files, apparent sizes, each\n"
        f"inode once) in {_files(t)} files, on a GPT disk image (a loop device) of three ext4 filesystems\n"
        f"mounted as the machine mounts them: {fss}.\n"
        "The kernel's modules have a filesystem of their own so that the two big ones are about the same\n"
        "size: the restore extracts them side by side. MB/s below is that file data over the median wall\n"
        f"time of {len(t.of('ours-capture'))} runs of each command, ours and tar's interleaved.\n",
        "- Capture, ours: the real command, `compose-initrd capture --root SRC -o SET`: the layout (sfdisk,\n"
        "  blkid, dumpe2fs, ...), one pax+zstd archive per filesystem (zstd level 3, a worker thread per\n"
        "  CPU; the sha256 of every file's content and of every archive), each fsynced, the manifest last.\n"
        "  tar: one archive of the same mounted tree (tar crosses mount points), zstd level 3 as well:\n"
        "  `--zstd` pipes it through one single-threaded `zstd`, `-I 'zstd -T0'` through a thread per CPU.",
        "- Restore, ours: what the restore's steps 6 and 7 run, `extract_and_verify()`: a child process per\n"
        "  archive, each onto its own freshly made filesystem, all at once, then every file compared with\n"
        "  the manifest (content sha256, type, mode, owner, mtime, xattrs/ACLs, hard links). tar: its\n"
        "  `--zstd` archive onto three equivalent fresh filesystems mounted nested as the source's; it\n"
        f"  verifies nothing. Fresh: `{rs.mkfs}` on a sparse file,\n  loop-mounted, before every run.",
        "- Each command ran after `sync` and `echo 3 > /proc/sys/vm/drop_caches` (both sides read cold),\n"
        "  under GNU time: max RSS is ru_maxrss, the largest single process of its tree (tar or its zstd;\n"
        "  our Python or one of the restore's children); CPU s is user + system time of the whole tree.\n"
        f"  Tree Pss is the peak, sampled every {SAMPLE_S * 1000:.0f} ms, of Pss summed over the tree. "
        "Memory columns are the\n  highest of the runs. The `sync` after each command is timed apart: "
        "our capture fsyncs its archives\n  itself, tar leaves them in the page cache; the restore stage "
        "syncs after extracting.\n",
        *summary_rows(t),
        "",
        *target_lines,
        f"- Against `tar -c -I 'zstd -T0'` our capture's MB/s ratio is "
        f"{t.speed_ratio('ours-capture', 'tar-c-T0'):.3f}. With the sync after each command\n"
        f"  counted: capture {t.speed_ratio('ours-capture', 'tar-c', sync=True):.3f} (against -T0 "
        f"{t.speed_ratio('ours-capture', 'tar-c-T0', sync=True):.3f}), restore "
        f"{t.speed_ratio('ours-restore', 'tar-x', sync=True):.3f}.",
        f"- CPU time (median), ours / tar's: capture {_cpu(t, 'ours-capture') / _cpu(t, 'tar-c'):.2f}, "
        f"restore {_cpu(t, 'ours-restore') / _cpu(t, 'tar-x'):.2f}. Where the machine's CPUs are\n"
        "  busy with other work (it is shared), wall time follows CPU time and parallelism gains little.",
        *time_lines(t),
        "- tar's restored tree, checked with our verifier against our manifest after its last run (mount\n"
        "  points left out: ours restores the directory under them, tar the mounted filesystem's root):\n"
        f"  {check}.",
        "- Memory against the size of the data: the tree above and a smaller, even sample of it, each once\n"
        "  (the data is streamed in fixed blocks; the manifest's records, one per file, are what grows).\n",
        *memory_rows(rs),
        "",
        *run_rows(rs),
        "",
        "```sh",
        *(rs.commands[tool] for tool in (*CAPTURES, *RESTORES)),
        "```",
    ]


def restore_target_lines(targets: Sequence[Target]) -> list[str]:
    return [f"- Target: {t.name} at least {t.limit:.3f}: {t.value:.3f} -> **{t.verdict}**" for t in targets]


def section_restore_set(report: Report) -> str | None:
    rs = report.restore_set
    if rs is None:
        return None
    return "\n".join(section_lines(rs, restore_target_lines(restore_set_targets(rs)))) + "\n"


def restore_set_json(rs: RestoreSetBench) -> dict[str, object]:
    doc = asdict(rs)
    for tree_doc, t in zip(doc["trees"], rs.trees, strict=True):
        tree_doc["mb_per_s"] = {tool: round(t.rate(tool), 1) for tool in (*CAPTURES, *RESTORES)}
    return {**doc, "capture_ratio": round(rs.capture_ratio, 4), "restore_ratio": round(rs.restore_ratio, 4)}
