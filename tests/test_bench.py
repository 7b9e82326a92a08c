"""scripts/bench, pure parts: ratios and verdicts, class comparison, /proc parsing and the
BENCHMARKS.md rendering, on hand-made builds (the real run takes minutes: `scripts/bench`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.errors import ComposeError
from initrd_composer.image.compression import compress_bytes
from initrd_composer.image.cpio_writer import cpio_bytes
from initrd_composer.image.entries import data_entry, dir_entry
from module_db.alias_match import AliasIndex
from module_db.index_files import AliasLine
from tests.bench_loader import (
    KVER,
    MACHINE,
    bench,
    bench_alias,
    bench_anchors,
    bench_boot,
    bench_builds,
    bench_common,
    bench_machine,
    bench_report,
    bench_results,
)

CPUINFO = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\nprocessor\t: 1\n"
)


def _build(key: str, label: str, walls: tuple[float, ...], size: int, modules: dict[str, str]) -> Any:
    # content: 3x the image, modules: half the content (round MiB numbers in the table)
    return bench_builds.Build(key, label, f"cmd-{key}", walls, size, "zstd", modules, 3 * size, 3 * size // 2)


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
    machine = MACHINE
    invocation = "scripts/bench" + ("" if dracut else " --skip-dracut")
    return bench_results.build_report(KVER, invocation, machine, builds)


def test_ratio_and_verdicts() -> None:
    assert bench_common.ratio(1.0, 8.0) == 0.125
    with pytest.raises(ComposeError):
        bench_common.ratio(1.0, 0.0)
    assert bench_results.Target("t", 0.125, 1 / 8).verdict == "PASS"  # at the limit passes
    assert bench_results.Target("t", 0.126, 1 / 8).verdict == "MISS"
    assert bench_results.Target("classes", 0, 0).passed
    assert not bench_results.Target("classes", 2, 0).passed


def test_build_median_min_and_class_counts() -> None:
    build = _build("x", "x", (2.0, 1.8, 3.0), 10, THEIRS)
    assert build.wall_median == 2.0
    assert build.wall_min == 1.8
    assert build.classes == {"drivers/net": 2, "drivers/ata": 1, "fs": 1, "drivers/i2c": 2, "sound": 1}
    assert build.as_json()["module_count"] == 7


def test_compare_classes_lists_missing_classes_and_module_differences() -> None:
    comp = bench_results.compare_classes("mk", OURS, THEIRS)
    assert comp.missing_classes == ("drivers/i2c", "sound")
    assert dict(comp.theirs_not_ours) == {
        "drivers/i2c": ("i2c_i801", "i2c_piix4"),
        "drivers/net": ("e1000e",),
        "sound": ("snd_pcm",),
    }
    assert comp.theirs_not_ours_count == 4
    assert comp.ours_not_theirs == 1  # crc32c_generic
    same = bench_results.compare_classes("mk", THEIRS, THEIRS)
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
    assert bench_builds.modules_of_listing(listing) == {"e1000": "drivers/net", "hid_generic": "drivers/hid"}


def test_proc_parsers() -> None:
    assert bench_machine.parse_cpu_model(CPUINFO) == "Intel(R) Xeon(R) Processor"
    assert bench_machine.parse_cpu_model("processor\t: 0\n") == "unknown"
    assert bench_machine.parse_mem_mib("MemTotal:        8126464 kB\nMemFree: 1 kB\n") == 7936
    with pytest.raises(ComposeError):
        bench_machine.parse_mem_mib("MemFree: 1 kB\n")


def test_markdown_has_every_section_with_measured_numbers() -> None:
    text = bench_report.render_markdown(_report())
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
    text = bench_report.render_markdown(_report(dracut=False))
    assert "dracut --no-hostonly" not in text
    assert "| class | mkinitramfs MODULES=most | ours |" in text
    assert "scripts/bench --skip-dracut\n" in text
    assert "- dracut was not built in this run (--skip-dracut)." in text


def test_sections_are_pluggable() -> None:
    report = _report()
    extra = bench_report.render_markdown(
        report, [*bench_report.SECTIONS, lambda r: f"## Boot\n\n{r.kernel}\n"]
    )
    assert extra.endswith(f"## Boot\n\n{KVER}\n")
    assert bench_report.render_markdown(report, [lambda r: None, bench_report.section_header]).startswith(
        "# Benchmarks"
    )


def test_report_json_is_serialisable() -> None:
    doc = json.loads(json.dumps(bench_report.report_json(_report())))
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
    facts = bench_builds.image_facts(image)
    assert facts.compression == "none+zstd"
    assert facts.content_bytes == 300 + 20 + 100 + 7
    assert facts.module_bytes == 300
    assert bench_builds.modules_of_listing(facts.paths) == {"dummy": "drivers/net"}


def test_report_notes_when_our_builds_differ() -> None:
    assert not any("tree changed" in n for n in _report().notes)
    report = _report()
    builds = [*report.builds[:-1], _build("ours-xz", "ours xz", (30.0,), 28 * 2**20, THEIRS)]
    changed = bench_results.build_report(KVER, "scripts/bench", report.machine, builds)
    assert any("ours xz 7" in n and "tree changed" in n for n in changed.notes)


def test_failure_line_prefers_the_error_over_the_hint() -> None:
    stderr = "compose-initrd: warning: w\ncompose-initrd: error: boom\ncompose-initrd: hint: rerun\n"
    assert bench_builds.failure_line(stderr) == "compose-initrd: error: boom"
    assert bench_builds.failure_line("Traceback\nValueError: x\n") == "ValueError: x"
    assert bench_builds.failure_line("") == "no output"


# ---------------------------------------------------------------- boot timings and alias matching

HWREPORT = (
    'hwreport: {"devices":[{"modalias":"pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",'
    '"driver":"e1000"},{"modalias":"platform:pcspkr"},{"modalias":""},{"modalias":"platform:pcspkr"}],'
    '"timings":{"init_start":6.14,"probe_end":9.42}}'
)
CONSOLE = ["[    0.000000] Linux version 6.1.0", "[    4.410197] Run /init as init process", "x"]


def _boot(ours: list[tuple[float, float, float]], debian: list[tuple[float, float, float]]) -> Any:
    """BootTimings from (kernel_init, init_start, probe_end) and (init, top, premount) per run."""
    return bench_boot.BootTimings(
        devices=("-device", "e1000"),
        memory_mb=1024,
        ours_image="out/bench/ours-zstd.img",
        ours_bytes=40 * 2**20,
        debian_image="/boot/initrd.img-k",
        debian_bytes=32 * 2**20,
        ours=tuple(bench_boot.OurBoot(k, s, e, 12.5) for k, s, e in ours),
        debian=tuple(bench_anchors.UdevTiming(i, t, p, 11.0) for i, t, p in debian),
        modaliases=("platform:pcspkr",),
    )


BOOT = _boot(
    [(4.4, 6.1, 9.4), (4.5, 6.3, 9.9), (4.3, 6.0, 9.0)], [(3.5, 5.9, 9.5), (3.6, 5.8, 9.4), (3.4, 6.0, 9.8)]
)


def test_parse_hwreport_and_our_boot_timings() -> None:
    report = bench_boot.parse_hwreport(HWREPORT)
    boot = bench_boot.parse_our_boot(CONSOLE, report, 12.744)
    assert boot == bench_boot.OurBoot(
        kernel_init=4.410197, init_start=6.14, probe_end=9.42, wall_seconds=12.74
    )
    assert boot.probe_seconds == 3.28
    assert bench_boot.modaliases_of(report) == (
        "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",
        "platform:pcspkr",
    )
    assert bench_boot.modaliases_of({}) == ()


@pytest.mark.parametrize("line", ["hwreport: {not json", "hwreport: [1, 2]", "no report here"])
def test_parse_hwreport_rejects_broken_lines(line: str) -> None:
    with pytest.raises(ComposeError):
        bench_boot.parse_hwreport(line)


@pytest.mark.parametrize(
    ("lines", "report"),
    [
        (CONSOLE, {"devices": []}),  # no timings at all
        (CONSOLE, {"timings": {"init_start": 6.1}}),  # no probe_end
        (CONSOLE, {"timings": {"init_start": "6.1", "probe_end": 9.0}}),  # not a number
        (["[    4.41] Run /init"], {"timings": {"init_start": 6.1, "probe_end": 9.0}}),  # no kernel stamp
    ],
)
def test_parse_our_boot_needs_the_stamp_and_both_timings(lines: list[str], report: dict[str, Any]) -> None:
    with pytest.raises(ComposeError):
        bench_boot.parse_our_boot(lines, report, 1.0)


def test_boot_ratios_use_medians_and_the_target_is_the_absolute_uptime() -> None:
    # medians: probe_end 9.4, premount 9.5; probe durations 3.3/3.6/3.0 -> 3.3; coldplug 3.6/3.6/3.8 -> 3.6
    assert BOOT.end_ratio == pytest.approx(9.4 / 9.5)
    assert BOOT.probe_ratio == pytest.approx(3.3 / 3.6)
    target = bench_results.boot_target(BOOT)
    assert target.verdict == "PASS" and target.limit == 1.0
    tie = _boot([(4.0, 6.0, 9.5)], [(3.0, 5.0, 9.5)])
    assert bench_results.boot_target(tie).verdict == "PASS"  # finishing at the same uptime meets "no later"
    # a faster probe that starts later (bigger image to unpack) still misses
    late = _boot([(5.0, 7.0, 9.6)], [(3.0, 5.0, 9.5)])
    assert late.probe_ratio < 1 and bench_results.boot_target(late).verdict == "MISS"


def test_boot_markdown_rows() -> None:
    summary = bench_report.boot_summary_rows(BOOT)
    assert "| image MiB | 40.0 | 32.0 |" in summary
    assert "| kernel runs /init (uptime s) | 4.40 | 3.50 |" in summary
    assert "| init running: our Python /init, Debian's top break (uptime s) | 6.10 | 5.90 |" in summary
    assert "| probe end, Debian's premount break (uptime s) | 9.40 | 9.50 |" in summary
    assert "| probe, coldplug+settle duration (s) | 3.30 | 3.60 |" in summary
    assert "| wall s (qemu start to that point) | 12.50 | 11.00 |" in summary
    runs = bench_report.boot_run_rows(BOOT)
    assert len(runs) == 2 + 3
    assert runs[3] == "| 2 | 4.50 | 6.30 | 9.90 | 3.60 | 12.50 | 3.60 | 5.80 | 9.40 | 3.60 | 11.00 |"
    assert all(row.count("|") == 12 for row in runs)


def test_report_with_boot_and_alias_renders_both_sections() -> None:
    alias = bench_alias.AliasBench(
        2, 5, (bench_alias.AliasTable("kernel modules.alias", 26222, 1, 43.0, 45.6, 50.0, 5000.0),)
    )
    report = _report()
    with_boot = bench_results.build_report(
        KVER, "scripts/bench", report.machine, report.builds, boot=BOOT, alias=alias
    )
    assert with_boot.targets[:-1] == report.targets
    assert with_boot.targets[-1].name.startswith("probe end / udev coldplug+settle end")
    text = bench_report.render_markdown(with_boot)
    assert text.index("## Driver classes") < text.index("## Boot timings") < text.index("## Alias matching")
    assert "| probe end / udev coldplug+settle end (guest uptime, QEMU) | 0.989 | 1.000 | PASS |" in text
    assert "- Target: our probe ends no later (uptime) than udev's coldplug+settle: 0.989 -> **PASS**" in text
    assert "- Probe duration / coldplug+settle duration: 0.917" in text
    assert "| kernel modules.alias | 26222 | 1/2 | 43.0 | 45.6 | 50.0 | 5000.0 | 100x |" in text
    doc = json.loads(json.dumps(bench_report.report_json(with_boot)))
    assert doc["boot"]["end_ratio"] == round(9.4 / 9.5, 4)
    assert doc["boot"]["debian"][0]["coldplug_seconds"] == 3.6
    assert doc["boot"]["ours"][1]["probe_seconds"] == 3.6
    assert doc["alias"]["tables"][0]["speedup"] == 100.0
    assert bench_report.report_json(report)["boot"] is None


def test_boot_only_report_has_no_build_sections() -> None:
    machine = _report().machine
    report = bench_results.build_report(
        KVER, "scripts/bench --boot-only", machine, [], boot=BOOT, notes=["only boots"]
    )
    assert [t.name for t in report.targets] == [bench_results.boot_target(BOOT).name]
    assert report.comparisons == () and report.notes == ("only boots",)
    text = bench_report.render_markdown(replace(report, raw_json="out/bench/boot-only.json"))
    assert "## Builds" not in text and "## Driver classes" not in text
    assert "## Targets" in text and "## Boot timings" in text and "## Alias matching" not in text
    assert "raw numbers: `out/bench/boot-only.json`" in text
    assert "- only boots" in text and "dracut" not in text


def test_linear_match_is_fnmatch_in_table_order() -> None:
    aliases = [
        AliasLine("pci:v00008086d0000100Esv*sd*bc*sc*i*", "e1000"),
        AliasLine("usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*", "usb_storage"),
        AliasLine("pci:v00008086d*sv*sd*bc02sc00i*", "zz_generic"),
        AliasLine("pci:v00008086d0000100[DE]sv*", "e1000"),  # a second pattern of the same module
        AliasLine("of:N*T*Cfoo_bar", "foo"),
    ]
    pci = "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"
    assert bench_alias.linear_match(aliases, pci) == ("e1000", "zz_generic")
    assert bench_alias.linear_match(aliases, "of:NxTyCfoo-bar") == ("foo",)  # '-' normalised like kmod
    # case-sensitive
    assert bench_alias.linear_match(aliases, "PCI:v00008086d0000100Esv0sd0bc02sc00i00") == ()
    assert bench_alias.linear_match(aliases, "bad]alias") == ()
    index = AliasIndex(aliases)
    assert bench_alias.check_same_matches(index, aliases, [pci, "of:NxTyCfoo-bar", "platform:x"], "t") == 2


def test_check_same_matches_fails_loudly_on_a_disagreement() -> None:
    index = AliasIndex([AliasLine("platform:pcspkr", "pcspkr")])
    with pytest.raises(ComposeError, match=r"t: AliasIndex gives \['pcspkr'\] for 'platform:pcspkr'"):
        bench_alias.check_same_matches(
            index, [AliasLine("platform:pcspk", "pcspkr")], ["platform:pcspkr"], "t"
        )


def test_time_alias_table_measures_both_ways() -> None:
    aliases = [AliasLine(f"pci:v{n:08X}d*sv*sd*bc*sc*i*", f"m{n}") for n in range(200)]
    table = bench_alias.time_alias_table("t", aliases, ["pci:v00000007d1sv2sd3bc4sc5i6", "platform:none"], 3)
    assert (table.name, table.patterns, table.matched) == ("t", 200, 1)
    assert min(table.build_ms, table.indexed_us, table.linear_us) > 0 and table.first_pass_ms >= 0
    assert table.speedup == pytest.approx(table.linear_us / table.indexed_us)


def test_boot_machine_disk_and_devices(tmp_path: Path) -> None:
    disk = bench_boot.boot_disk(tmp_path)
    assert disk.stat().st_size == 64 * 2**20
    argv = bench_boot.boot_devices(disk)
    assert argv[argv.index("-drive") + 1] == f"if=none,id=d0,file={disk},format=raw"
    assert "e1000,netdev=n0" in argv and "ahci,id=ahci0" in argv and "ide-hd,drive=d0,bus=ahci0.0" in argv


def test_cli_documents_and_checks_the_boot_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        bench.parse_args(["--help"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--skip-boot" in help_text and "--boot-only" in help_text and "--boot-runs" in help_text
    args = bench.parse_args(["--boot-only", "--boot-runs", "2"])
    assert args.boot_only and not args.skip_boot and args.boot_runs == 2
    for words in (["--skip-boot", "--boot-only"], ["--boot-runs", "0"]):
        with pytest.raises(SystemExit) as bad:
            bench.parse_args(words)
        assert bad.value.code == 2
