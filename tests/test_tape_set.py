"""A restore set read from an OBDR tape's data file: the tape written by the real writer
(`write_obdr` into a tape-image directory, read through the same Tape interface the st
driver's DeviceTape offers), indexed as the media stage indexes it, then read as nuke reads
it: the small files first without touching an archive, the archives front to back in one
pass, and one process extracting them in tape order."""

from __future__ import annotations

from pathlib import Path

import pytest

from initrd_composer.boot.restore.extract_all import ExtractJob, extract_and_verify, failure_lines
from initrd_composer.boot.restore.stage import read_set
from initrd_composer.boot.restore_set import RestoreSetError
from initrd_composer.boot.restore_set.location import SequentialLocation
from initrd_composer.boot.sources.tape_set import (
    TapeIndex,
    TapeSet,
    from_note,
    index_members,
    note_of,
    set_prefix,
    tape_set,
)
from initrd_composer.boot.tape import TapeImageDir, blocks_stream, read_tape_file
from initrd_composer.capture.set_writer import write_set
from initrd_composer.media.obdr_writer import write_obdr
from tests.test_obdr_writer import iso  # noqa: F401  (the fixture: a real El Torito ISO)
from tests.test_restore_extract_all import _tree
from tests.test_restore_set_roundtrip import layout_of


class CountingOpens:
    """Opens the tape image as the st device would be opened: once per pass."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opens = 0

    def __call__(self) -> TapeImageDir:
        self.opens += 1
        return TapeImageDir.open(self.path)


def _index(tape_dir: Path) -> TapeIndex:
    """What the media stage's pass over tape file 2 lists (sources.tape_source)."""
    stream = blocks_stream(read_tape_file(TapeImageDir.open(tape_dir), 2))
    index = index_members(stream)
    while stream.read(1 << 20):
        pass
    return index


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, iso: Path) -> tuple[Path, Path]:  # noqa: F811
    """A real restore set of three filesystems (write_set), on a tape image."""
    base = tmp_path_factory.mktemp("tape-set")
    trees = [(name, _tree(base / f"src-{name}", name, files)) for name, files in
             (("root", 900), ("boot", 60), ("srv", 300))]  # fmt: skip
    set_dir = base / "set"
    write_set(set_dir, trees, layout=layout_of(trees))
    write_obdr(base / "tape", iso, set_dir, block_size=65536)
    return set_dir, base / "tape"


def test_the_small_files_lie_before_the_archives_and_those_smallest_first(written: tuple[Path, Path]) -> None:
    set_dir, tape_dir = written
    index = _index(tape_dir)
    assert index.complete and index.error is None
    names = [name for name, _ in index.files]
    assert sorted(names) == sorted(p.name for p in set_dir.iterdir())
    assert names.index("manifest.json") < names.index("boot.pax.zst")
    assert names.index("layout.json") < names.index("boot.pax.zst")
    archives = [(size, name) for name, size in index.files if name.endswith(".pax.zst")]
    assert archives == sorted(archives) and len(archives) == 3
    assert dict(index.files) == {p.name: p.stat().st_size for p in set_dir.iterdir()}


def test_reads_in_tape_order_are_one_pass_and_a_file_behind_rewinds(written: tuple[Path, Path]) -> None:
    set_dir, tape_dir = written
    opens = CountingOpens(tape_dir)
    location = TapeSet("/dev/nst0", "", _index(tape_dir), open_tape=opens)
    assert isinstance(location, SequentialLocation)
    assert location.read("manifest.json") == (set_dir / "manifest.json").read_bytes()
    assert location.read("layout.json") == (set_dir / "layout.json").read_bytes()
    assert opens.opens == 1  # the layout was passed on the way to the manifest, or lay after it
    assert location.missing(["root.pax.zst", "boot.pax.zst", "nothing.pax.zst"]) == ["nothing.pax.zst"]
    archives = sorted(("boot.pax.zst", "srv.pax.zst", "root.pax.zst"), key=location.position)
    for name in archives:
        with location.open(name) as stream:
            assert stream.read() == (set_dir / name).read_bytes()
    assert opens.opens == 2  # all three archives in one pass after the small files
    with location.open(archives[0]) as stream:  # behind the position: from the start again
        assert stream.read() == (set_dir / archives[0]).read_bytes()
    assert opens.opens == 3
    location.release()
    with pytest.raises(FileNotFoundError):
        location.open("nothing.pax.zst")
    again = from_note(note_of(location))
    assert (again.device, again.prefix, again.index) == ("/dev/nst0", "", location.index)


def test_nuke_reads_the_set_and_extracts_it_from_the_tape_in_one_child(written: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    _set_dir, tape_dir = written
    opens = CountingOpens(tape_dir)
    location = TapeSet("/dev/nst0", "", _index(tape_dir), open_tape=opens)
    manifest, layout = read_set(location)
    assert [a.name for a in manifest.archives] and layout
    jobs = []
    for archive in manifest.archives:
        dest = tmp_path / archive.name
        dest.mkdir()
        jobs.append(ExtractJob(archive, location, dest))
    lines: list[str] = []
    results = extract_and_verify(jobs, lines.append)
    assert [r.name for r in results] == [a.name for a in manifest.archives]  # the jobs' order
    assert all(r.ok for r in results), failure_lines(results)
    assert sum(r.entries for r in results) == sum(len(a.files) for a in manifest.archives)
    for job in jobs:
        names = {p.name for p in job.dest.rglob("*.txt")}
        assert names and all(n.startswith(job.archive.name + "-") for n in names)
    assert opens.opens == 1  # the parent's reads; the child opened its own, once
    assert len([line for line in lines if "verified in" in line]) == 3


def test_a_damaged_archive_on_the_tape_is_named(written: tuple[Path, Path], tmp_path: Path) -> None:
    set_dir, tape_dir = written
    index = _index(tape_dir)
    manifest, _layout = read_set(TapeSet("/dev/nst0", "", index, open_tape=CountingOpens(tape_dir)))
    broken = tmp_path / "tape"
    broken.mkdir()
    for path in tape_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    data = bytearray((broken / "file-002.bin").read_bytes())
    root = next(a for a in manifest.archives if a.name == "root")
    offset = data.find((set_dir / root.file).read_bytes()[:4096])
    assert offset > 0
    data[offset + root.size // 2] ^= 0xFF
    (broken / "file-002.bin").write_bytes(bytes(data))
    location = TapeSet("/dev/nst0", "", index, open_tape=CountingOpens(broken))
    jobs = []
    for archive in manifest.archives:
        dest = tmp_path / f"dest-{archive.name}"
        dest.mkdir()
        jobs.append(ExtractJob(archive, location, dest))
    results = {r.name: r for r in extract_and_verify(jobs, lambda _line: None)}
    assert not results["root"].ok and all(r.ok for name, r in results.items() if name != "root")


def test_where_the_set_lies_in_the_data() -> None:
    assert set_prefix(["manifest.json", "layout.json", "root.pax.zst"], None, "t") == ""
    assert set_prefix(["README", "m1/manifest.json", "m1/root.pax.zst"], None, "t") == "m1/"
    assert set_prefix(["a/manifest.json", "b/manifest.json"], "b", "t") == "b/"
    with pytest.raises(RestoreSetError, match="several restore sets on t: a, b"):
        set_prefix(["a/manifest.json", "b/layout.json"], None, "t")
    with pytest.raises(RestoreSetError, match="no restore set on t"):
        set_prefix(["etc/fstab", "big.bin"], None, "t")


def test_a_set_below_the_top_reads_its_own_files_only(tmp_path: Path, iso: Path) -> None:  # noqa: F811
    data = tmp_path / "data"
    trees = [("root", _tree(tmp_path / "src", "root", 40))]
    write_set(data / "web01", trees, layout=layout_of(trees))
    (data / "manifest.json.txt").write_text("not the set\n")
    write_obdr(tmp_path / "tape", iso, data, block_size=32768)
    location = tape_set("/dev/nst1", _index(tmp_path / "tape").as_json(), None)
    assert location.prefix == "web01/" and location.shown == "/dev/nst1 file 2 (web01)"
    location.open_tape = CountingOpens(tmp_path / "tape")
    assert location.read("manifest.json") == (data / "web01" / "manifest.json").read_bytes()
    assert location.missing(["root.pax.zst", "manifest.json.txt"]) == ["manifest.json.txt"]


def test_a_data_file_that_is_no_tar_is_refused_with_the_reason() -> None:
    bad = TapeIndex((), False, "not a readable tar archive (invalid header)").as_json()
    with pytest.raises(RestoreSetError, match="/dev/nst0 file 2: not a readable tar archive"):
        tape_set("/dev/nst0", bad, None)
    with pytest.raises(RestoreSetError, match="listed no files"):
        tape_set("/dev/nst0", None, None)
