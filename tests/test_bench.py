"""scripts/bench, pure parts: ratios and verdicts, class comparison, /proc parsing and the
BENCHMARKS.md rendering, on hand-made builds (the real run takes minutes: `scripts/bench`)."""

from __future__ import annotations

import importlib.util
import json
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from initrd_composer.compression import compress_bytes
from initrd_composer.cpio_writer import cpio_bytes
from initrd_composer.errors import ComposeError
from initrd_composer.image_entries import data_entry, dir_entry

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load_bench() -> ModuleType:
    # scripts/bench has no .py suffix, so it is loaded by path; it imports bench_anchors
    # from scripts/ the way it does when run as a program.
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

KVER = "6.1.0-56-amd64"
CPUINFO = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\nprocessor\t: 1\n"
)


def _build(key: str, label: str, walls: tuple[float, ...], size: int, modules: dict[str, str]) -> Any:
    # content: 3x the image, modules: half the content (round MiB numbers in the table)
    return bench.Build(key, label, f"cmd-{key}", walls, size, "zstd", modules, 3 * size, 3 * size // 2)


OURS = {"e1000": "drivers/net", "ahci": "drivers/ata", "ext4": "fs", "crc32c_generic": "crypto"}
THEIRS = {
    "e1000": "drivers/net",
    "e1000e": "drivers/net",
    "ahci": "drivers/ata",
    "ext4": "fs",
    "i2c_piix4": "drivers/i2c",
    "i2c_i801": "drivers/i2c",
    "snd_pcm": "sound",
}


def _report(*, dracut: bool = True) -> Any:
    builds = [
        _build("ours-warm", "ours warm", (2.0, 1.8, 1.9), 40 * 2**20, OURS),
        _build("ours-cold", "ours cold", (3.3,), 40 * 2**20, OURS),
        _build("mkinitramfs", "mkinitramfs MODULES=most", (18.0, 20.0, 17.0), 32 * 2**20, THEIRS),
        _build("ours-zstd19", "ours zstd -19", (9.0,), 30 * 2**20, OURS),
        _build("ours-xz", "ours xz", (30.0,), 28 * 2**20, OURS),
    ]
    if dracut:
        dracut_mods = {"e1000": "drivers/net"}
        builds.insert(3, _build("dracut", "dracut --no-hostonly", (60.0,), 50 * 2**20, dracut_mods))
    machine = bench.Machine(
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
    invocation = "scripts/bench" + ("" if dracut else " --skip-dracut")
    return bench.build_report(KVER, invocation, machine, builds)


def test_ratio_and_verdicts() -> None:
    assert bench.ratio(1.0, 8.0) == 0.125
    with pytest.raises(ComposeError):
        bench.ratio(1.0, 0.0)
    assert bench.Target("t", 0.125, 1 / 8).verdict == "PASS"  # at the limit passes
    assert bench.Target("t", 0.126, 1 / 8).verdict == "MISS"
    assert bench.Target("classes", 0, 0).passed
    assert not bench.Target("classes", 2, 0).passed


def test_build_median_min_and_class_counts() -> None:
    build = _build("x", "x", (2.0, 1.8, 3.0), 10, THEIRS)
    assert build.wall_median == 2.0
    assert build.wall_min == 1.8
    assert build.classes == {"drivers/net": 2, "drivers/ata": 1, "fs": 1, "drivers/i2c": 2, "sound": 1}
    assert build.as_json()["module_count"] == 7


def test_compare_classes_lists_missing_classes_and_module_differences() -> None:
    comp = bench.compare_classes("mk", OURS, THEIRS)
    assert comp.missing_classes == ("drivers/i2c", "sound")
    assert dict(comp.theirs_not_ours) == {
        "drivers/i2c": ("i2c_i801", "i2c_piix4"),
        "drivers/net": ("e1000e",),
        "sound": ("snd_pcm",),
    }
    assert comp.theirs_not_ours_count == 4
    assert comp.ours_not_theirs == 1  # crc32c_generic
    same = bench.compare_classes("mk", THEIRS, THEIRS)
    assert same.missing_classes == () and same.theirs_not_ours_count == 0


def test_targets_use_medians_against_mkinitramfs() -> None:
    report = _report()
    by_name = {t.name: t for t in report.targets}
    warm = by_name["build time (warm cache, median) / mkinitramfs"]
    assert warm.value == pytest.approx(1.9 / 18.0) and warm.verdict == "PASS"
    cold = by_name["build time (cold cache) / mkinitramfs"]
    assert cold.value == pytest.approx(3.3 / 18.0) and cold.verdict == "MISS"
    size = by_name["image size / mkinitramfs"]
    assert size.value == pytest.approx(40 / 32) and size.verdict == "MISS"
    classes = by_name["driver classes mkinitramfs has and we lack"]
    assert classes.value == 2 and classes.verdict == "MISS"


def test_module_maps_from_listing_and_manifest_paths() -> None:
    listing = [
        "usr/lib/modules/6.1.0-56-amd64/kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
        "usr/lib/modules/6.1.0-56-amd64/kernel/drivers/hid/hid-generic.ko.zst",
        "usr/lib/modules/6.1.0-56-amd64/modules.dep",
    ]
    assert bench.modules_of_listing(listing) == {"e1000": "drivers/net", "hid_generic": "drivers/hid"}


def test_proc_parsers() -> None:
    assert bench.parse_cpu_model(CPUINFO) == "Intel(R) Xeon(R) Processor"
    assert bench.parse_cpu_model("processor\t: 0\n") == "unknown"
    assert bench.parse_mem_mib("MemTotal:        8126464 kB\nMemFree: 1 kB\n") == 7936
    with pytest.raises(ComposeError):
        bench.parse_mem_mib("MemFree: 1 kB\n")


def test_markdown_has_every_section_with_measured_numbers() -> None:
    text = bench.render_markdown(_report())
    for heading in ("# Benchmarks", "## Machine", "## Builds", "## Targets", "## Size / time trade-off",
                    "## Driver classes", "## Commands"):  # fmt: skip
        assert f"\n{heading}" in f"\n{text}"
    assert "- CPUs: 2 x Intel(R) Xeon(R) Processor" in text
    assert "| ours warm | zstd | 3 | 1.90 | 1.80 | 40.0 | 120.0 | 60.0 | 4 |" in text
    assert "| mkinitramfs MODULES=most | zstd | 3 | 18.00 | 17.00 | 32.0 | 96.0 | 48.0 | 7 |" in text
    assert "| build time (warm cache, median) / mkinitramfs | 0.106 (1/9.5) | 0.125 (1/8.0) | PASS |" in text
    assert "| image size / mkinitramfs | 1.250 | 1.000 | MISS |" in text
    assert "| driver classes mkinitramfs has and we lack | 2 | 0 | MISS |" in text
    assert "| ours zstd -19 | 9.00 | 30.0 | 0.938 | 0.500 |" in text
    assert "| drivers/i2c | 2 | 0 | 0 |" in text  # mkinitramfs, dracut, ours
    assert "- Classes it packs and we do not: `drivers/i2c`, `sound`" in text
    assert "| drivers/i2c | 2 | i2c_i801, i2c_piix4 |" in text
    assert "```sh\nscripts/bench\ncmd-ours-warm\n" in text
    assert "initrd-composer commit" not in text  # no commit known: no line, no filler
    assert "TODO" not in text and "n/a" not in text


def test_markdown_without_dracut_has_no_dracut_column() -> None:
    text = bench.render_markdown(_report(dracut=False))
    assert "dracut --no-hostonly" not in text
    assert "| class | mkinitramfs MODULES=most | ours |" in text
    assert "scripts/bench --skip-dracut\n" in text
    assert "- dracut was not built in this run (--skip-dracut)." in text


def test_sections_are_pluggable() -> None:
    report = _report()
    extra = bench.render_markdown(report, [*bench.SECTIONS, lambda r: f"## Boot\n\n{r.kernel}\n"])
    assert extra.endswith(f"## Boot\n\n{KVER}\n")
    assert bench.render_markdown(report, [lambda r: None, bench.section_header]).startswith("# Benchmarks")


def test_report_json_is_serialisable() -> None:
    doc = json.loads(json.dumps(bench.report_json(_report())))
    assert doc["builds"]["mkinitramfs"]["wall_median"] == 18.0
    assert doc["class_comparisons"][0]["missing_classes"] == ["drivers/i2c", "sound"]
    assert doc["targets"][-1]["result"] == "MISS"


def test_image_facts_reads_compression_content_and_module_bytes(tmp_path: Path) -> None:
    entries = [
        dir_entry("usr"),
        data_entry("usr/lib/modules/6.1.0-56-amd64/kernel/drivers/net/dummy.ko", b"m" * 300),
        data_entry("usr/lib/modules/6.1.0-56-amd64/modules.dep", b"d" * 20),
        data_entry("init", b"i" * 100, mode=0o755),
    ]
    image = tmp_path / "tiny.img"
    image.write_bytes(cpio_bytes([data_entry("kernel/x86/microcode/x.bin", b"u" * 7)], 0)
                      + compress_bytes(cpio_bytes(entries, 0), "zstd"))  # fmt: skip
    facts = bench.image_facts(image)
    assert facts.compression == "none+zstd"
    assert facts.content_bytes == 300 + 20 + 100 + 7
    assert facts.module_bytes == 300
    assert bench.modules_of_listing(facts.paths) == {"dummy": "drivers/net"}


def test_report_notes_when_our_builds_differ() -> None:
    assert not any("tree changed" in n for n in _report().notes)
    report = _report()
    builds = [*report.builds[:-1], _build("ours-xz", "ours xz", (30.0,), 28 * 2**20, THEIRS)]
    changed = bench.build_report(KVER, "scripts/bench", report.machine, builds)
    assert any("ours xz 7" in n and "tree changed" in n for n in changed.notes)


def test_failure_line_prefers_the_error_over_the_hint() -> None:
    stderr = "compose-initrd: warning: w\ncompose-initrd: error: boom\ncompose-initrd: hint: rerun\n"
    assert bench.failure_line(stderr) == "compose-initrd: error: boom"
    assert bench.failure_line("Traceback\nValueError: x\n") == "ValueError: x"
    assert bench.failure_line("") == "no output"
