"""Reading module files: the fast .modinfo path agrees with pyelftools on a whole kernel."""

from __future__ import annotations

import io
import lzma
from pathlib import Path

import pytest
import zstandard
from elftools.elf.elffile import ELFFile

from initrd_composer.build.firmware_plan import plan_firmware
from initrd_composer.build.module_files import (
    ModinfoCache,
    decompressed_name,
    modinfo_from_elf,
    modinfo_section_fast,
    read_module,
)
from initrd_composer.errors import ComposeError
from module_db.kernel_modules import KernelModules


def _pyelftools_modinfo(data: bytes) -> bytes:
    section = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
    assert section is not None
    payload: bytes = section.data()
    return payload


@pytest.mark.oracle
def test_fast_modinfo_equals_pyelftools_for_every_module(
    kernel: tuple[str, Path], kernel_modules: KernelModules
) -> None:
    for entry in kernel_modules.deps.values():
        data = read_module(kernel[1] / entry.path)
        assert modinfo_section_fast(data) == _pyelftools_modinfo(data), entry.path


def test_fast_path_declines_what_it_does_not_know() -> None:
    assert modinfo_section_fast(b"\x7fELF\x01\x01" + bytes(64)) is None  # ELF32
    assert modinfo_section_fast(b"\x7fELF\x02\x02" + bytes(64)) is None  # big endian
    assert modinfo_section_fast(b"\x7fELF\x02\x01" + bytes(10)) is None  # truncated


def test_modinfo_of_real_module_and_compressed_copies(kernel: tuple[str, Path], tmp_path: Path) -> None:
    src = next((kernel[1] / "kernel/drivers/net/ethernet/intel").glob("e100.ko*"))
    data = read_module(src)
    info = modinfo_from_elf(data, src)
    assert "e100/d101m_ucode.bin" in info["firmware"]
    xz = tmp_path / "e100.ko.xz"
    xz.write_bytes(lzma.compress(data, check=lzma.CHECK_CRC32))
    zst = tmp_path / "e100.ko.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(data))
    assert read_module(xz) == data == read_module(zst)
    assert decompressed_name("kernel/x/e100.ko.zst") == "kernel/x/e100.ko"
    cache = ModinfoCache(tmp_path / "cache.json")
    assert "e100/d101m_ucode.bin" in cache.firmware(xz)
    cache.save()
    again = ModinfoCache(tmp_path / "cache.json")
    assert again.firmware(xz) == cache.firmware(xz)


def test_bad_module_files_name_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"not an elf at all")
    with pytest.raises(ComposeError, match=r"not an ELF kernel module: .*junk\.ko"):
        modinfo_from_elf(junk.read_bytes(), junk)
    broken = tmp_path / "broken.ko.xz"
    broken.write_bytes(b"\xfd7zXZ\x00garbage")
    with pytest.raises(ComposeError, match=r"corrupt compressed module .*broken\.ko\.xz"):
        read_module(broken)
    with pytest.raises(ComposeError, match="module file missing"):
        read_module(tmp_path / "absent.ko")


def test_truncated_zstd_module_and_firmware_are_errors_not_short_files(tmp_path: Path) -> None:
    # A zstd decompressobj hands back b"" for a frame cut short, without complaint.
    data = b"\x7fELF\x02\x01" + bytes(range(256)) * 400
    whole = zstandard.ZstdCompressor().compress(data)
    module = tmp_path / "cut.ko.zst"
    module.write_bytes(whole)
    assert read_module(module) == data
    module.write_bytes(whole[:-20])
    with pytest.raises(ComposeError, match=r"corrupt compressed module .*cut\.ko\.zst: truncated zstd data"):
        read_module(module)
    (tmp_path / "fw").mkdir()
    firmware = tmp_path / "fw/blob.bin.zst"
    firmware.write_bytes(whole)
    plan = plan_firmware({"m": ["blob.bin"]}, [tmp_path / "fw"])
    assert plan.present == ("blob.bin",) and plan.entries[0].data == data
    firmware.write_bytes(whole[:-20])
    with pytest.raises(ComposeError, match=r"corrupt compressed firmware .*blob\.bin\.zst: truncated zstd"):
        plan_firmware({"m": ["blob.bin"]}, [tmp_path / "fw"])
