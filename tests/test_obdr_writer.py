"""The OBDR writer: layout on a drive model (block sizes, filemarks, compression), the image
directory and its read-back through the boot side's reader, the data archive against GNU tar,
and the failure paths (refused block size, full tape, capacity, interruption)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from initrd_composer.boot.tape import (
    DeviceTape,
    TapeImageDir,
    copy_tape_file,
    open_tape_file,
    parse_obdr_label,
    read_tape_file,
)
from initrd_composer.errors import ComposeError
from initrd_composer.media import obdr_writer
from initrd_composer.media.data_archive import padded, plan_archive, write_archive
from initrd_composer.media.obdr_writer import obdr_image_iso, read_obdr_iso, read_obdr_label, write_obdr
from initrd_composer.runner import run
from tests.test_tape import DriveModel, Record

NS = 1_600_000_000_123_456_789
ROOT = os.geteuid() == 0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real El Torito ISO from xorriso (no-emulation boot image), a few hundred KiB."""
    base = tmp_path_factory.mktemp("iso")
    tree = base / "tree"
    tree.mkdir()
    (tree / "boot.bin").write_bytes(os.urandom(2048))
    (tree / "payload").write_bytes(os.urandom(300_000))
    out = base / "rescue.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-o", out, "-b", "boot.bin", "-no-emul-boot",
         "-boot-load-size", "4", tree])
    return out


def make_tree(root: Path) -> Path:
    """Backup-like data: nested dirs, modes incl. setuid, ns mtimes, symlinks, a hardlink, a
    FIFO, an empty file, a long and a non-ASCII name, foreign uid/gid (as root)."""
    root.mkdir()
    (root / "a.txt").write_text("hello\n")
    (root / "big.bin").write_bytes(os.urandom(200_000))
    (root / "empty").write_bytes(b"")
    (root / ("n" * 150)).write_text("long name\n")
    (root / "ünïcode-名前.txt").write_text("x")
    sub = root / "sub"
    (sub / "deep").mkdir(parents=True)
    (sub / "deep" / "f").write_text("deep\n")
    os.symlink("../a.txt", sub / "link")
    os.symlink("missing-target", sub / "dangling")
    os.link(root / "big.bin", sub / "hard")
    os.mkfifo(root / "fifo")
    os.chmod(root / "a.txt", 0o640)
    os.chmod(root / "empty", 0o600)
    os.chmod(root / "big.bin", 0o4755)
    os.chmod(sub, 0o711)
    if ROOT:
        os.chown(root / "a.txt", 1234, 5678)
        os.chown(sub / "link", 4321, 8765, follow_symlinks=False)
    for n, path in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(path, ns=(NS, NS + n * 1001), follow_symlinks=False)
    os.utime(root, ns=(NS, NS - 7))
    return root


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "data")


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """What a restore must reproduce, per relative path (hardlinks as shared inode groups)."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISREG(st.st_mode):
            body: object = sha256(path.read_bytes())
            body = (body, inodes.setdefault(st.st_ino, rel))
        elif stat.S_ISLNK(st.st_mode):
            body = os.readlink(path)
        else:
            body = None
        out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    st.st_mtime_ns, body)
    return out


def extract_with_gnu_tar(archive: Path, dest: Path) -> None:
    dest.mkdir()
    run(["tar", "--numeric-owner", "-xpf", archive, "-C", dest])


def model_opener(model: DriveModel) -> Callable[[Path], DeviceTape]:
    return lambda path: DeviceTape(path, write=True, syscalls=model)


CHAR_DEVICE = Path("/dev/null")  # any character device selects the drive path; the opener is the model


def test_layout_on_a_drive(iso: Path, data: Path) -> None:
    model = DriveModel()
    report = write_obdr(CHAR_DEVICE, iso, data, block_size=65536, open_device=model_opener(model))
    files = model.files()
    assert len(files) == 3
    assert [{len(r.data or b"") for r in f} for f in files] == [{512}, {2048}, {65536}]
    assert len(files[0]) == 20
    assert [{r.compression for r in f} for f in files] == [{False}, {False}, {True}]
    # A filemark after each file and nothing after the last one.
    assert model.filemarks() == [20, 20 + 1 + len(files[1]), len(model.records) - 1]
    assert b"".join(r.data or b"" for r in files[1]) == iso.read_bytes()
    assert report.iso_sha256 == sha256(iso.read_bytes())
    assert [(f.role, f.block_size, f.blocks) for f in report.files] == [
        ("header", 512, 20), ("iso", 2048, iso.stat().st_size // 2048), ("data", 65536, len(files[2]))]
    assert report.kind == "device" and model.pos == 0  # rewound at the end
    # Block sizes asked for before anything is written, then compression off; on for the data.
    assert model.ops[:5] == [("rew", 1), ("setblk", 65536), ("setblk", 2048), ("setblk", 512),
                             ("compression", 0)]
    assert model.ops[-4:-1] == [("compression", 1), ("setblk", 65536), ("weof", 1)]
    # The data file read back through the boot side's reader, in variable mode.
    out = io.BytesIO()
    info = copy_tape_file(DeviceTape("/dev/nst0", syscalls=model), 2, out)
    assert info.block_size == 65536
    assert info.sha256 == report.data_sha256 == sha256(b"".join(r.data or b"" for r in files[2]))
    # `ls` on the drive: the ISO back from tape file 1.
    reader = lambda path: DeviceTape(path, syscalls=model)  # noqa: E731
    assert read_obdr_iso(CHAR_DEVICE, open_device=reader) == iso.read_bytes()
    label = parse_obdr_label(b"".join(r.data or b"" for r in files[0]))
    assert label is not None
    assert (label.iso_bytes, label.data_bytes, label.data_block_size) == (
        iso.stat().st_size, report.data_tar_bytes, 65536)


@pytest.mark.parametrize(("block_size", "compress"), [(131072, False), (10240, True)])
def test_chosen_block_size_and_compression(iso: Path, data: Path, block_size: int, compress: bool) -> None:
    model = DriveModel()
    write_obdr(CHAR_DEVICE, iso, data, block_size=block_size, compress_data=compress,
               open_device=model_opener(model))
    files = model.files()
    assert {len(r.data or b"") for r in files[2]} == {block_size}
    assert {r.compression for r in files[2]} == {compress}
    assert {r.compression for r in files[0] + files[1]} == {False}


def test_boot_only_tape(iso: Path) -> None:
    model = DriveModel()
    report = write_obdr(CHAR_DEVICE, iso, None, block_size=65536, open_device=model_opener(model))
    assert len(model.files()) == 2 and model.filemarks()[-1] == len(model.records) - 1
    assert report.data_sha256 is None and [f.role for f in report.files] == ["header", "iso"]


def test_image_round_trip(tmp_path: Path, iso: Path, data: Path) -> None:
    target = tmp_path / "tape"
    report = write_obdr(target, iso, data, block_size=65536)
    assert report.kind == "image"
    names = ["file-000.bin", "file-001.bin", "file-002.bin", "tape.json"]
    assert sorted(p.name for p in target.iterdir()) == names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "tape"]  # no temp sibling left
    image_iso = obdr_image_iso(target)
    assert image_iso.read_bytes() == iso.read_bytes() == read_obdr_iso(target)
    tape = TapeImageDir.open(target)
    assert [f["block_size"] for f in tape.files] == [512, 2048, 65536]
    assert [f["compression"] for f in tape.files] == [False, False, True]
    # Data: back through the reader, byte-identical to what was written, and it restores the tree.
    archive = tmp_path / "data.tar"
    with open(archive, "wb") as out:
        info = copy_tape_file(tape, 2, out)
    assert info.sha256 == report.data_sha256 == tape.files[2]["sha256"]
    assert archive.read_bytes() == (target / "file-002.bin").read_bytes()
    assert report.data_tar_bytes is not None
    assert info.bytes == padded(report.data_tar_bytes, 65536)
    extract_with_gnu_tar(archive, tmp_path / "restored")
    assert snapshot(tmp_path / "restored") == snapshot(data)
    # What a restore does: extract straight from the tape stream.
    with tarfile.open(fileobj=open_tape_file(tape, 2), mode="r|") as stream:
        streamed = {m.name: (m.mode, int(m.mtime)) for m in stream}
    assert streamed == {e.info.name: (e.info.mode, e.info.mtime) for e in plan_archive(data).entries}
    label = read_obdr_label(target)
    assert label is not None and label.data_bytes == report.data_tar_bytes


def test_same_input_same_image(tmp_path: Path, iso: Path, data: Path) -> None:
    one = write_obdr(tmp_path / "one", iso, data, block_size=65536)
    two = write_obdr(tmp_path / "two", iso, data, block_size=65536)
    assert [f.sha256 for f in one.files] == [f.sha256 for f in two.files]


def test_archive_plan_is_exact_and_keeps_metadata(tmp_path: Path, data: Path) -> None:
    plan = plan_archive(data)
    out = io.BytesIO()
    assert write_archive(plan, out) == plan.size == len(out.getvalue())
    assert plan.size % 10240 == 0
    names = [e.info.name for e in plan.entries]
    assert names[0] == "." and "sub/hard" in names and "n" * 150 in names
    hard = next(e.info for e in plan.entries if e.info.name == "sub/hard")
    assert hard.islnk() and hard.linkname == "big.bin"
    # Sockets cannot be archived: listed, not silently lost.
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(data / "sock"))
    try:
        assert plan_archive(data).skipped == ("sock",)
    finally:
        sock.close()


def test_archive_refuses_a_file_that_changed(data: Path) -> None:
    plan = plan_archive(data)
    (data / "a.txt").write_text("grown since the plan\n")
    with pytest.raises(ComposeError, match=r"a\.txt changed size"):
        write_archive(plan, io.BytesIO())


def old_tape() -> DriveModel:
    """A drive holding a tape from before: one 512-byte file."""
    model = DriveModel()
    model.records = [Record(b"old" * 170 + b"xx"), Record(None)]
    return model


@pytest.mark.parametrize("refused", [65536, 2048, 512])
def test_refused_block_size_leaves_the_tape_as_it_was(iso: Path, data: Path, refused: int) -> None:
    model = old_tape()
    model.refuse = frozenset({refused})
    with pytest.raises(ComposeError) as info:
        write_obdr(CHAR_DEVICE, iso, data, block_size=65536, open_device=model_opener(model))
    assert f"refused block size {refused}" in info.value.hint
    assert "nothing was written" in info.value.hint
    assert model.records == old_tape().records


@pytest.mark.parametrize(("model", "words"), [
    (DriveModel(capacity=10240 + 200 * 2048), "No space left on device"),  # full inside the ISO
    (DriveModel(capacity=10240 + 600_000), "No space left on device"),  # full inside the data
    (DriveModel(eio_after=300_000), "Input/output error"),
])
def test_failure_mid_write_invalidates_the_tape(iso: Path, data: Path, model: DriveModel, words: str) -> None:
    with pytest.raises(ComposeError) as info:
        write_obdr(CHAR_DEVICE, iso, data, block_size=65536, open_device=model_opener(model))
    assert words in info.value.message
    assert "marked unusable" in info.value.hint
    # One filemark at the beginning: no header, no ISO, nothing a drive boots or a restore reads.
    assert model.records == [Record(None)]
    assert list(read_tape_file(DeviceTape("/dev/nst0", syscalls=model), 0)) == []


def test_data_changing_during_the_write_invalidates_the_tape(iso: Path, data: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real_plan = plan_archive

    def plan_then_grow(root: Path) -> object:
        plan = real_plan(root)
        (root / "a.txt").write_text("grown after planning\n")
        return plan

    monkeypatch.setattr(obdr_writer, "plan_archive", plan_then_grow)
    model = DriveModel()
    with pytest.raises(ComposeError, match=r"tape file 2.*a\.txt changed size") as info:
        write_obdr(CHAR_DEVICE, iso, data, block_size=65536, open_device=model_opener(model))
    assert "snapshot" in info.value.hint and "marked unusable" in info.value.hint
    assert model.records == [Record(None)]


def test_capacity_checked_before_writing(tmp_path: Path, iso: Path, data: Path) -> None:
    wanted = r"data directory .*data needs [\d.]+ MiB.*the medium holds 0\.2 MiB"
    with pytest.raises(ComposeError, match=wanted):
        write_obdr(tmp_path / "tape", iso, data, block_size=65536, capacity=200 * 1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

    def never(path: Path) -> DeviceTape:
        raise AssertionError("the drive must not be touched")

    with pytest.raises(ComposeError, match="needs"):
        write_obdr(CHAR_DEVICE, iso, data, block_size=65536, capacity=200 * 1024, open_device=never)
    needed = 10240 + iso.stat().st_size + padded(plan_archive(data).size, 65536)
    write_obdr(tmp_path / "fits", iso, data, block_size=65536, capacity=needed)


def test_interrupted_image_write_leaves_nothing(tmp_path: Path, iso: Path, data: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def half_then_interrupt(plan: object, out: io.RawIOBase) -> int:
        out.write(bytes(100_000))
        raise KeyboardInterrupt

    monkeypatch.setattr(obdr_writer, "write_archive", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_obdr(tmp_path / "tape", iso, data, block_size=65536)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert not list(tmp_path.rglob("tape.json"))


def test_bad_targets_and_isos(tmp_path: Path, iso: Path, data: Path) -> None:
    with pytest.raises(ComposeError, match="not a SCSI tape device"):
        write_obdr(CHAR_DEVICE, iso, None, block_size=65536)
    with pytest.raises(ComposeError, match="no tape drive at /dev/nst-none"):
        write_obdr(Path("/dev/nst-none"), iso, None, block_size=65536)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ComposeError, match="is not empty"):
        write_obdr(tmp_path / "full", iso, None, block_size=65536)
    (tmp_path / "file").write_text("")
    with pytest.raises(ComposeError, match="neither a tape device nor a directory"):
        write_obdr(tmp_path / "file", iso, None, block_size=65536)
    with pytest.raises(ComposeError, match="bad data block size"):
        write_obdr(tmp_path / "new", iso, None, block_size=1000)
    odd = tmp_path / "odd.iso"
    odd.write_bytes(iso.read_bytes()[:-100])
    with pytest.raises(ComposeError, match="not whole 2048-byte sectors"):
        write_obdr(tmp_path / "new", odd, None, block_size=65536)
    plain = tmp_path / "plain.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-o", plain, data / "sub" / "deep"])
    with pytest.raises(ComposeError, match="no El Torito boot record"):
        write_obdr(tmp_path / "new", plain, None, block_size=65536)
    with pytest.raises(ComposeError, match="does not exist"):
        write_obdr(tmp_path / "new", iso, tmp_path / "no-data", block_size=65536)
    assert not (tmp_path / "new").exists()
    # An empty directory may be the target; an image dir without its manifest is not OBDR.
    (tmp_path / "empty").mkdir()
    write_obdr(tmp_path / "empty", iso, None, block_size=65536)
    assert obdr_image_iso(tmp_path / "empty").read_bytes() == iso.read_bytes()
    with pytest.raises(ComposeError, match="not a tape image"):
        obdr_image_iso(tmp_path / "full")
    with pytest.raises(ComposeError, match="not a SCSI tape device"):
        read_obdr_iso(CHAR_DEVICE)
    model = DriveModel()
    tape = DeviceTape("/dev/nst0", write=True, syscalls=model)
    tape.write_block(bytes(2048))
    tape.close()
    with pytest.raises(ComposeError, match="tape file 0 is not an OBDR header"):
        read_obdr_iso(CHAR_DEVICE, open_device=lambda path: DeviceTape(path, syscalls=model))


def test_drive_without_compression_control(iso: Path, data: Path) -> None:
    model = DriveModel(compression_control=False)
    model.compression = False
    report = write_obdr(CHAR_DEVICE, iso, data, block_size=65536, open_device=model_opener(model))
    assert len(model.files()) == 3
    assert report.notes and "no compression setting" in report.notes[0]
    assert {f.compression for f in report.files} == {None}
