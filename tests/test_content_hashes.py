"""Content hashed during the extraction: used by the verification only while the file is
unchanged since (boot/restore_set/content_hashes)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from initrd_composer.boot.restore_set.content_hashes import ContentHasher, KnownContent
from initrd_composer.boot.restore_set.manifest import ArchiveRecord
from initrd_composer.boot.restore_set.verify import Mismatch, compare_tree, stat_record


def _archive(root: Path, names: list[str]) -> ArchiveRecord:
    records = [stat_record(os.fsencode(root), ".", os.lstat(root))]
    records += [stat_record(os.fsencode(root / n), n, os.lstat(root / n)) for n in names]
    return ArchiveRecord("t", "t.pax.zst", "0" * 64, 0, tuple(records))


def test_the_hasher_reads_each_file_it_is_given_relative_to_its_root(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"alpha" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"")
    hasher = ContentHasher(tmp_path)
    for name in ("a", "sub/b", "gone"):
        hasher.add(name)
    known = hasher.finish()
    assert sorted(known) == ["a", "sub/b"]  # an unreadable one is left to the verification
    assert known["a"].sha256 == hashlib.sha256(b"alpha" * 1000).hexdigest()
    assert known["a"].ino == os.stat(tmp_path / "a").st_ino


def test_a_known_hash_stands_for_the_read_only_while_the_file_is_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "f").write_bytes(b"original")
    archive = _archive(root, ["f"])
    st = os.stat(root / "f")
    # A wrong hash with the file's inode, times and size is believed: no second read was made.
    wrong = {"f": KnownContent("0" * 64, st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size)}
    assert compare_tree(root, archive, known=wrong) == [Mismatch("f", "content sha256 differs")]
    # Rewritten after it was hashed (same size, mtime put back): its ctime moved, so the
    # verification reads it again and finds the change the known hash would have hidden.
    hasher = ContentHasher(root)
    hasher.add("f")
    known = hasher.finish()
    assert compare_tree(root, archive, known=known) == []
    time.sleep(0.05)  # ctime has the kernel's tick as its granularity
    (root / "f").write_bytes(b"tampered")
    os.utime(root / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert compare_tree(root, archive, known=known) == [Mismatch("f", "content sha256 differs")]
