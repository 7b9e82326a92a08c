"""Bad input to compose-initrd: one error line plus a hint, exit 1 (usage: 2), no
traceback, and nothing left behind at or beside the -o path."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from initrd_composer.cli import main as cli
from initrd_composer.runner import run
from tests.image_fixtures import compose, fake_copy
from tests.kernel_fixtures import (
    installed_kernels,
    is_module_file,
    module_bytes,
    module_suffix,
    recompress_modules,
    write_module,
)

pytest_plugins = ("tests.image_fixtures",)

ERROR = "compose-initrd: error: "
HINT = "compose-initrd: hint: "


def _one_error(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """(message, hint), after checking stderr is exactly an error line and a hint line."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "Traceback" not in err
    assert len(lines) == 2, err
    assert lines[0].startswith(ERROR) and lines[1].startswith(HINT), err
    assert len(lines[1]) > len(HINT) + 5
    return lines[0][len(ERROR) :], lines[1][len(HINT) :]


def _fails(
    capsys: pytest.CaptureFixture[str], argv: list[str], cache: Path, out_dir: Path, status: int = 1
) -> tuple[str, str]:
    """Build into out_dir/initrd.img; expect `status`, one error, and out_dir as it was."""
    before = sorted(os.listdir(out_dir))
    assert compose([*argv, "-o", str(out_dir / "initrd.img")], cache) == status
    assert sorted(os.listdir(out_dir)) == before
    return _one_error(capsys)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


@pytest.fixture
def fake(fake_kernel_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the small fake kernel, to damage."""
    return fake_copy(fake_kernel_dir, tmp_path)


# -- the kernel ------------------------------------------------------------------------


def _installed_listing() -> str:
    """Every installed kernel (a modules.dep under /lib/modules or /usr/lib/modules), oldest
    first, as the error lists them: more than the one under test on an upgraded machine."""
    return ", ".join(installed_kernels())


def test_unknown_kernel_version_lists_installed(
    capsys: pytest.CaptureFixture[str], build_cache: Path, out_dir: Path, kernel: tuple[str, Path]
) -> None:
    msg, hint = _fails(capsys, ["--kernel", "9.9.9-nothing"], build_cache, out_dir)
    assert msg == f"unknown kernel '9.9.9-nothing': installed are {_installed_listing()}"
    assert kernel[0] in _installed_listing().split(", ")
    assert "a pattern such as 6.x" in hint


def test_kernel_pattern_without_match_lists_installed(
    capsys: pytest.CaptureFixture[str], build_cache: Path, out_dir: Path, kernel: tuple[str, Path]
) -> None:
    msg, _hint = _fails(capsys, ["--kernel", "2.x"], build_cache, out_dir)
    assert msg == f"unknown kernel '2.x': installed are {_installed_listing()}"
    assert kernel[0] in _installed_listing().split(", ")


def test_missing_modules_directory(
    capsys: pytest.CaptureFixture[str], build_cache: Path, out_dir: Path
) -> None:
    msg, hint = _fails(capsys, ["--kernel", str(out_dir / "nowhere")], build_cache, out_dir)
    assert msg == f"no such modules directory: {out_dir / 'nowhere'}"
    assert hint == "give a version or a directory"


def test_missing_modules_dep(
    capsys: pytest.CaptureFixture[str], build_cache: Path, out_dir: Path, fake: Path
) -> None:
    (fake / "modules.dep").unlink()
    msg, hint = _fails(capsys, ["--kernel", str(fake)], build_cache, out_dir)
    assert msg == f"{fake / 'modules.dep'}: missing; run depmod for this kernel"
    assert "depmod" in hint


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x89\xff\xfe garbage \x00\x01", "{dep}: not text (byte 0); is it corrupt?"),
        (b"kernel/a.ko:\nkernel/b.ko kernel/a.ko\n",
         "{dep}:2: expected 'module.ko: deps...': 'kernel/b.ko kernel/a.ko'"),
        (b"kernel/a.txt: kernel/b.ko\n",
         "{dep}:1: not a kernel module path: 'kernel/a.txt': 'kernel/a.txt: kernel/b.ko'"),
        (b"# nothing but a comment\n", "{dep}: lists no modules; run depmod"),
    ],
    ids=["binary", "no-colon", "not-a-module", "empty"],
)
def test_corrupt_modules_dep(
    *, content: bytes, expected: str, capsys: pytest.CaptureFixture[str], build_cache: Path, out_dir: Path,
    fake: Path,
) -> None:
    (fake / "modules.dep").write_bytes(content)
    msg, hint = _fails(capsys, ["--kernel", str(fake)], build_cache, out_dir)
    assert msg == expected.format(dep=fake / "modules.dep")
    assert "depmod" in hint


def _break_module(fake: Path, how: str) -> Path:
    """Damage libahci's file (.ko, or .ko.xz/.zst as the kernel ships it: the damage is to
    the ELF inside, compressed again, so the error is the same whatever the compression)."""
    found = [p for p in (fake / "kernel/drivers/ata").glob("libahci.ko*") if is_module_file(p.name)]
    assert len(found) == 1, found
    libahci = found[0]
    if how == "missing":
        libahci.unlink()
    elif how == "junk":
        write_module(libahci, b"this is not an ELF file\n" * 10)
    elif how == "truncated":  # a real ELF header whose sections lie past the end
        elf = module_bytes(libahci)
        assert elf.startswith(b"\x7fELF")
        write_module(libahci, elf[:64])
    else:  # corrupt-compressed: xz/zstd/gzip framing that does not decode
        assert module_suffix(libahci), libahci
        libahci.write_bytes(libahci.read_bytes()[:40])
    return libahci


@pytest.mark.parametrize("suffix", ["", ".xz"], ids=["ko", "ko.xz"])
@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("missing", "module file missing: {ko}"),
        ("junk", "not an ELF kernel module: {ko}"),
        ("truncated", "corrupt ELF kernel module {ko}: "),
    ],
)
def test_broken_module_file(
    *, suffix: str, how: str, expected: str, capsys: pytest.CaptureFixture[str], build_cache: Path,
    out_dir: Path, fake: Path,
) -> None:
    recompress_modules(fake, suffix)  # plain and compressed modules, whatever the kernel ships
    ko = _break_module(fake, how)
    assert ko.name == "libahci.ko" + suffix
    msg, hint = _fails(capsys, ["--kernel", str(fake), "--no-cache"], build_cache, out_dir)
    assert msg.startswith(expected.format(ko=ko))
    assert "reinstall the kernel package" in hint


@pytest.mark.parametrize("suffix", [".xz", ".zst", ".gz"])
def test_corrupt_compressed_module_file(
    *, suffix: str, capsys: pytest.CaptureFixture[str], build_cache: Path, out_dir: Path, fake: Path,
) -> None:
    recompress_modules(fake, suffix)
    ko = _break_module(fake, "corrupt-compressed")
    msg, hint = _fails(capsys, ["--kernel", str(fake), "--no-cache"], build_cache, out_dir)
    assert msg.startswith(f"corrupt compressed module {ko}: ")
    assert "reinstall the kernel package" in hint


def test_broken_module_file_is_found_despite_the_cache(
    capsys: pytest.CaptureFixture[str], build_cache: Path, out_dir: Path, fake: Path, tmp_path: Path
) -> None:
    assert compose(["--kernel", str(fake), "-o", str(tmp_path / "ok.img")], build_cache) == 0
    capsys.readouterr()
    ko = _break_module(fake, "junk")
    msg, _hint = _fails(capsys, ["--kernel", str(fake)], build_cache, out_dir)
    assert msg == f"not an ELF kernel module: {ko}"


def test_add_modules_unknown_name(
    capsys: pytest.CaptureFixture[str], build_cache: Path, out_dir: Path, fake_kernel_dir: Path
) -> None:
    argv = ["--kernel", str(fake_kernel_dir), "--add-modules", "no_such_thing"]
    msg, hint = _fails(capsys, argv, build_cache, out_dir)
    assert msg.startswith("--add-modules: no module or alias 'no_such_thing' in kernel ")
    assert "compose-initrd match" in hint


def test_bad_source_date_epoch(
    capsys: pytest.CaptureFixture[str], build_cache: Path, out_dir: Path, fake_kernel_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = os.listdir(out_dir)
    with monkeypatch.context() as m:
        m.setenv("XDG_CACHE_HOME", str(build_cache))
        m.setenv("SOURCE_DATE_EPOCH", "yesterday")
        assert cli.main(["--kernel", str(fake_kernel_dir), "-o", str(out_dir / "x.img")]) == 1
    assert os.listdir(out_dir) == before
    assert _one_error(capsys)[0] == "SOURCE_DATE_EPOCH='yesterday' is not a number"


# -- the output ------------------------------------------------------------------------


def test_output_directory_missing(
    capsys: pytest.CaptureFixture[str], build_cache: Path, tmp_path: Path, fake_kernel_dir: Path
) -> None:
    target = tmp_path / "no" / "such" / "initrd.img"
    assert compose(["--kernel", str(fake_kernel_dir), "-o", str(target)], build_cache) == 1
    assert _one_error(capsys)[0] == f"cannot write {target}: directory {target.parent} does not exist"
    assert not (tmp_path / "no").exists()


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    """A mount point, unmounted after the test if something was mounted there."""
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    if os.path.ismount(path):
        run(["umount", path])


@pytest.mark.root
def test_full_disk_leaves_old_image_and_no_temp_file(
    capsys: pytest.CaptureFixture[str], build_cache: Path, fake_kernel_dir: Path, mnt: Path
) -> None:
    run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt])
    (mnt / "initrd.img").write_bytes(b"the previous image")
    msg, hint = _fails(capsys, ["--kernel", str(fake_kernel_dir)], build_cache, mnt)
    assert msg == f"no space left on device writing {mnt / 'initrd.img'}"
    assert "free space" in hint
    assert (mnt / "initrd.img").read_bytes() == b"the previous image"


@pytest.mark.root
def test_read_only_output_directory(
    capsys: pytest.CaptureFixture[str], build_cache: Path, fake_kernel_dir: Path, mnt: Path
) -> None:
    run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", mnt])
    msg, hint = _fails(capsys, ["--kernel", str(fake_kernel_dir)], build_cache, mnt)
    assert msg == f"cannot write {mnt / 'initrd.img'}: Read-only file system"
    assert "writable directory" in hint


@pytest.mark.root
def test_unwritable_output_directory(
    capsys: pytest.CaptureFixture[str], build_cache: Path, fake_kernel_dir: Path, out_dir: Path
) -> None:
    # Root ignores permission bits, not the immutable attribute.
    run(["chattr", "+i", out_dir])
    try:
        msg, hint = _fails(capsys, ["--kernel", str(fake_kernel_dir)], build_cache, out_dir)
    finally:
        run(["chattr", "-i", out_dir])
    assert msg == f"cannot write {out_dir / 'initrd.img'}: Operation not permitted"
    assert "writable directory" in hint


# -- usage errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--compress", "lz9"], "argument --compress: invalid choice: 'lz9'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["ls", "--bogus", "x.img"], "unrecognized arguments: --bogus"),
        (["deps", "--kernel", "6.x"], "the following arguments are required: modules"),
        (["check", "x.img"], "the following arguments are required: --modaliases"),
        (["--level", "many"], "argument --level: invalid int value: 'many'"),
    ],
    ids=["compress", "option", "verb-option", "deps-nothing", "check-no-file", "level"],
)
def test_usage_errors_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], build_cache: Path, out_dir: Path
) -> None:
    assert compose(argv, build_cache) == 2
    msg, hint = _one_error(capsys)
    assert msg.startswith(expected)
    assert hint == "see `compose-initrd --help`"
    assert os.listdir(out_dir) == []


def test_console_script_exit_status_and_debug_traceback(tmp_path: Path) -> None:
    # The real process: sys.exit(main()), and the --debug switch that adds the traceback.
    repo = Path(__file__).resolve().parent.parent
    prog: list[str | Path] = [sys.executable, "-m", "initrd_composer"]
    rest: list[str | Path] = ["--kernel", "9.9.9-nothing", "-o", tmp_path / "x.img"]
    proc = run([*prog, *rest], check=False, cwd=repo)
    err = proc.stderr.decode()
    assert (proc.returncode, proc.stdout) == (1, b"")
    assert err.startswith(ERROR + "unknown kernel '9.9.9-nothing'") and len(err.splitlines()) == 2
    debug = run([*prog, "--debug", *rest], check=False, cwd=repo)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr.decode()
    assert debug.stderr.decode().splitlines()[-2].startswith(ERROR)
    usage = run([*prog, *rest, "--compress", "lz9"], check=False, cwd=repo)
    assert usage.returncode == 2
    assert os.listdir(tmp_path) == []
