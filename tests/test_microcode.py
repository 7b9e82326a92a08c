from __future__ import annotations

import io
from pathlib import Path

from initrd_composer.build.microcode import microcode_entries, microcode_segment
from initrd_composer.image.compression import compressing
from initrd_composer.image.cpio_writer import write_cpio
from initrd_composer.image.entries import data_entry
from initrd_composer.image.reader import list_paths, open_image, parse_image
from initrd_composer.runner import run

EPOCH = 1_700_000_000


def _fake_firmware(root: Path, base: str = "lib/firmware") -> None:
    intel = root / base / "intel-ucode"
    amd = root / base / "amd-ucode"
    intel.mkdir(parents=True)
    amd.mkdir(parents=True)
    # Written out of order: the blobs must follow name order, not creation order.
    (intel / "06-9e-0a").write_bytes(b"[intel 06-9e-0a]")
    (intel / "06-8e-09").write_bytes(b"[intel 06-8e-09]")
    (intel / "subdir").mkdir()
    (amd / "microcode_amd_fam17h.bin").write_bytes(b"[amd fam17h]")
    (amd / "microcode_amd.bin").write_bytes(b"[amd]")
    (amd / "microcode_amd_fam17h.bin.asc").write_bytes(b"signature, not microcode")
    (amd / "README").write_bytes(b"not microcode")


def test_vendor_blobs_concatenate_sorted_files(tmp_path: Path) -> None:
    _fake_firmware(tmp_path)
    blobs = {e.path: e.data for e in microcode_entries(tmp_path)}
    assert blobs == {
        "kernel/x86/microcode/AuthenticAMD.bin": b"[amd][amd fam17h]",
        "kernel/x86/microcode/GenuineIntel.bin": b"[intel 06-8e-09][intel 06-9e-0a]",
    }


def test_merged_usr_sysroot(tmp_path: Path) -> None:
    _fake_firmware(tmp_path, "usr/lib/firmware")
    assert len(microcode_entries(tmp_path)) == 2


def test_one_vendor_only(tmp_path: Path) -> None:
    (tmp_path / "lib/firmware/amd-ucode").mkdir(parents=True)
    (tmp_path / "lib/firmware/amd-ucode/microcode_amd.bin").write_bytes(b"A")
    (tmp_path / "lib/firmware/intel-ucode").mkdir()  # installed but empty
    assert [e.path for e in microcode_entries(tmp_path)] == ["kernel/x86/microcode/AuthenticAMD.bin"]


def test_no_microcode_no_segment(tmp_path: Path) -> None:
    (tmp_path / "lib/firmware").mkdir(parents=True)
    assert microcode_entries(tmp_path) == []
    assert microcode_segment(tmp_path, EPOCH) == b""


def test_segment_is_an_uncompressed_cpio_the_early_loader_finds(tmp_path: Path) -> None:
    _fake_firmware(tmp_path)
    segment = microcode_segment(tmp_path, EPOCH)
    assert segment.startswith(b"070701")  # the kernel's early loader scans raw newc only
    assert len(segment) % 4 == 0  # so a following cpio would start aligned
    image = parse_image(segment)
    assert [s.compression for s in image.segments] == ["none"]
    assert image.paths() == [
        "kernel",
        "kernel/x86",
        "kernel/x86/microcode",
        "kernel/x86/microcode/AuthenticAMD.bin",
        "kernel/x86/microcode/GenuineIntel.bin",
    ]
    assert image.read("kernel/x86/microcode/GenuineIntel.bin").startswith(b"[intel 06-8e-09]")
    assert microcode_segment(tmp_path, EPOCH) == segment  # reproducible


def test_early_segment_then_compressed_main(tmp_path: Path) -> None:
    _fake_firmware(tmp_path / "root")
    out = io.BytesIO()
    out.write(microcode_segment(tmp_path / "root", EPOCH))
    with compressing(out, "zstd") as sink:
        write_cpio([data_entry("init", b"#!/bin/sh\n", mode=0o755)], sink, EPOCH)
    path = tmp_path / "initrd.img"
    path.write_bytes(out.getvalue())
    image = open_image(path)
    assert [s.compression for s in image.segments] == ["none", "zstd"]
    assert image.read("kernel/x86/microcode/AuthenticAMD.bin") == b"[amd][amd fam17h]"
    assert image.read("init") == b"#!/bin/sh\n"
    # initramfs-tools is installed by scripts/setup: a missing lsinitramfs fails here.
    assert run(["lsinitramfs", path]).stdout.decode().splitlines() == list_paths(path)
