"""Step 6-7 of nuke on the host: several archives extracted at the same time (one child
process each: libarchive writes relative to the current directory), each verified, and a
damaged archive reported by name, not raised."""

from __future__ import annotations

import os
from pathlib import Path

from initrd_composer.boot.restore.extract_all import ExtractJob, extract_and_verify, failure_lines
from initrd_composer.boot.restore_set.location import SetDirectory
from initrd_composer.capture.set_writer import write_set
from tests.test_restore_set_roundtrip import layout_of


def _tree(root: Path, tag: str, files: int) -> Path:
    root.mkdir()
    for i in range(files):
        sub = root / f"d{i % 7}"
        sub.mkdir(exist_ok=True)
        (sub / f"{tag}-{i}.txt").write_bytes(os.urandom(1000 + i) + tag.encode())
    os.link(root / "d0" / f"{tag}-0.txt", root / "hard")
    (root / "link").symlink_to("d1")
    return root


def _jobs(tmp_path: Path, names: tuple[str, ...]) -> list[ExtractJob]:
    trees = [(n, _tree(tmp_path / f"src-{n}", n, 300)) for n in names]
    set_dir = tmp_path / "set"
    manifest = write_set(set_dir, trees, layout=layout_of(trees))
    jobs = []
    for archive in manifest.archives:
        dest = tmp_path / f"dest-{archive.name}"
        dest.mkdir()
        jobs.append(ExtractJob(archive, SetDirectory(set_dir), dest))
    return jobs


def test_archives_extracted_side_by_side_each_into_its_own_directory(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, ("root", "boot", "srv"))
    lines: list[str] = []
    results = extract_and_verify(jobs, lines.append)
    assert [r.name for r in results] == ["root", "boot", "srv"]
    assert all(r.ok for r in results), failure_lines(results)
    for job in jobs:  # each tree holds its own files only
        names = {p.name for p in job.dest.rglob("*.txt")}
        assert names and all(n.startswith(job.archive.name + "-") for n in names)
    assert sum(r.entries for r in results) == sum(len(j.archive.files) for j in jobs)
    assert len([line for line in lines if "verified in" in line]) == 3


def test_a_damaged_archive_is_named_and_the_others_still_restore(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, ("root", "srv"))
    victim = tmp_path / "set" / jobs[1].archive.file
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    results = extract_and_verify(jobs, lambda _line: None)
    assert results[0].ok
    assert not results[1].ok
    failures = failure_lines(results)
    assert failures and all(line.startswith("srv: ") for line in failures), failures
    assert "srv.pax.zst" in failures[0]  # the archive named: libarchive's error or the sha256 check
