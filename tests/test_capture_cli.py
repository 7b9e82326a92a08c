"""`compose-initrd capture` and `compose-initrd layout` for real, as root: a sparse GPT disk
image of a small machine (test_mount_source.build_source_image: ext4 root with awkward files,
ext4 /boot, xfs /srv, swap, a BIOS boot partition) captured with --disk and from a live
tree mounted on the host; each archive extracted and compared with the source by rsync."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.boot.restore_set.extract import extract_archive
from initrd_composer.boot.restore_set.layout import load_layout
from initrd_composer.boot.restore_set.manifest import MANIFEST_NAME, check_extra, load_set, set_layout
from initrd_composer.boot.restore_set.verify import verify_tree
from initrd_composer.capture import archive_write, mount_source
from initrd_composer.capture.layout.collect import collect_layout
from initrd_composer.capture.mount_source import attach_images, ro_options
from initrd_composer.cli import main as cli
from initrd_composer.runner import run
from tests.test_mount_source import SourceImage, build_source_image

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent
PARTS = {"boot": (2, "ext4"), "root": (4, "ext4"), "srv": (5, "xfs")}  # archive -> partition, type


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> SourceImage:
    assert os.geteuid() == 0, "these tests attach loop devices and mount: run them as root"
    return build_source_image(tmp_path_factory.mktemp("capture-source"))


def _cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    status = cli.main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


@contextmanager
def _source_filesystems(image: Path, base: Path) -> Iterator[dict[str, Path]]:
    """Each filesystem of the image mounted read-only on its own (not nested)."""
    with attach_images([image]) as (loop,), ExitStack() as stack:
        mounted = {}
        for name, (n, kind) in PARTS.items():
            where = base / f"src-{name}"
            where.mkdir()
            run(["mount", "-t", kind, "-o", ro_options(kind), f"{loop}p{n}", where])
            stack.callback(run, ["umount", where])
            mounted[name] = where
        yield mounted


@contextmanager
def _fresh_xfs(base: Path) -> Iterator[Path]:
    image, target = base / "xfs.img", base / "restored-xfs"
    with open(image, "wb") as f:
        f.truncate(320 << 20)
    run(["mkfs.xfs", "-q", image])
    target.mkdir()
    run(["mount", "-o", "loop", image, target])
    try:
        yield target
    finally:
        run(["umount", target])


def _extract(set_dir: Path, name: str, dest: Path) -> None:
    manifest = load_set(set_dir)
    dest.mkdir(exist_ok=True)
    archive = manifest.archive(name)
    extract_archive(set_dir / archive.file, dest, archive)
    verify_tree(dest, archive)


def _rsync_differences(src: Path, dst: Path, *excludes: str) -> str:
    argv = ["rsync", "-naiHAXc", "--delete", *(f"--exclude={e}" for e in excludes), f"{src}/", f"{dst}/"]
    return run(argv).stdout.decode("utf-8", "surrogateescape")


def _nothing_left(image: Path) -> None:
    """No loop device of the image is left (one whose filesystems were still mounted would be:
    a loop device stays attached while in use)."""
    assert run(["losetup", "-j", image]).stdout == b"", "a loop device of the image is still attached"


def test_capture_disk_image_restores_identically(source: SourceImage, tmp_path: Path) -> None:
    """The installed command, as a user runs it: each archive restores to what rsync (checksums,
    hard links, ACLs, xattrs, owners, devices) calls the same tree."""
    out = tmp_path / "set"
    command = REPO / ".venv" / "bin" / "compose-initrd"
    argv: list[str | Path] = [command, "capture", "--disk", source.image, "-o", out]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603 - our own command
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"captured 3 filesystems into {out}: ") and " MB/s" in proc.stdout
    # stderr is not a terminal: a line per filesystem instead of the bar
    assert [ln.split(":")[1].strip() for ln in proc.stderr.splitlines() if ln.startswith("capture: ") and
            " -> " in ln] == ["root", "boot", "srv"]  # fmt: skip
    assert "Traceback" not in proc.stderr
    _nothing_left(source.image)

    manifest = load_set(out)
    assert [a.name for a in manifest.archives] == ["root", "boot", "srv"]
    layout = set_layout(out, manifest)
    fss = layout["filesystems"]
    by_type = sorted((fs["type"], fs["uuid"], fs["archive"], fs["mountpoint"]) for fs in fss)
    uuids = source.uuids
    assert by_type == sorted([
        ("ext4", uuids["boot"], "boot", "/boot"), ("ext4", uuids["root"], "root", "/"),
        ("xfs", uuids["srv"], "srv", "/srv"), ("swap", uuids["swap"], None, None),
    ])  # fmt: skip
    assert [e["mountpoint"] for e in layout["fstab"]][:4] == ["/", "/boot", "/srv", "none"]
    extras = {e.file: e for e in manifest.extras}
    (disk,) = layout["disks"]
    assert set(extras) == {"layout.json", disk["gap"]["file"], f"disk-{disk['name']}-part1-bios-boot.bin"}
    for extra in manifest.extras:
        check_extra(out, extra)
    assert (out / f"disk-{disk['name']}-part1-bios-boot.bin").read_bytes()[:4096] == source.bios_boot

    with _source_filesystems(source.image, tmp_path) as mounted, _fresh_xfs(tmp_path) as xfs:
        for name, src in mounted.items():
            # As a restore does: /srv onto a new xfs (whose ACLs also show as XFS's own
            # trusted.SGI_ACL_* xattrs), the ext4 ones onto this host's ext4.
            dst = xfs if name == "srv" else tmp_path / f"restored-{name}"
            _extract(out, name, dst)
            ignore = ("/tmp/sock",) if name == "root" else ()  # sockets are listed, not archived
            assert _rsync_differences(src, dst, *ignore) == "", name
    restored = tmp_path / "restored-root"
    sparse = os.stat(restored / "var" / "sparse")
    assert sparse.st_size == 1 << 30 and sparse.st_blocks * 512 < (1 << 20)
    assert "security.capability" in os.listxattr(restored / "usr" / "bin" / "ping")
    bin_dir = restored / "usr" / "bin"
    assert os.stat(bin_dir / "tool").st_ino == os.stat(bin_dir / "tool-again").st_ino
    assert (restored / "boot").is_dir() and list((restored / "boot").iterdir()) == []  # a mount point


def test_dry_run_lists_and_writes_nothing(
    source: SourceImage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "set"
    status, stdout, err = _cli(capsys, ["capture", "--disk", str(source.image), "-o", str(out), "--dry-run",
                                        "--exclude", "*.tmp"])  # fmt: skip
    assert status == 0, err
    assert not out.exists()
    lines = stdout.splitlines()
    assert lines[0].startswith(f"disk {source.image}: /dev/loop") and lines[0].endswith("(read-only)")
    rows = [ln.split() for ln in lines if ln.startswith("  ") and ln.split()[0] in PARTS]
    assert [(r[0], r[2], r[3], r[-1]) for r in rows] == [
        ("root", "ext4", "/", "root.pax.zst"), ("boot", "ext4", "/boot", "boot.pax.zst"),
        ("srv", "xfs", "/srv", "srv.pax.zst")]  # fmt: skip
    assert all(r[1].startswith("/dev/loop") and r[1].endswith(f"p{PARTS[r[0]][0]}") for r in rows)
    assert any(ln.startswith("swap: /dev/loop") for ln in lines)
    assert "excludes: *.tmp" in lines and lines[-1] == "dry run: nothing written"
    assert "not mounted from etc/fstab: tmpfs /tmp: tmpfs: not a disk filesystem" in lines
    _nothing_left(source.image)


def test_excludes(source: SourceImage, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "set"
    status, _out, err = _cli(capsys, ["capture", "--disk", str(source.image), "-o", str(out), "--no-progress",
                                      "--exclude", "*.tmp", "--exclude", "/var/cache/*",
                                      "--exclude", "/srv/data/file1*"])  # fmt: skip
    assert status == 0, err
    assert err == ""  # --no-progress: no lines
    manifest = load_set(out)
    root = {r.path for r in manifest.archive("root").files}
    srv = {r.path for r in manifest.archive("srv").files}
    assert "var/cache" in root and not any(p.startswith("var/cache/") for p in root)
    assert "home/user/notes.tmp" not in root and "home/user/dangling" in root
    assert "data/skip.tmp" not in srv and "data/file2.bin" in srv
    assert not any(p.startswith("data/file1") for p in srv) and "data/file0.bin" in srv


def test_bad_output_is_one_error_line(
    source: SourceImage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    status, _out, err = _cli(capsys, ["capture", "--disk", str(source.image), "-o", str(a_file)])
    assert status == 1
    assert err.splitlines() == [f"compose-initrd: error: output {a_file} exists and is not a directory",
                                "compose-initrd: hint: give a directory for the set"]  # fmt: skip
    ro = tmp_path / "ro"
    ro.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "none", ro])
    try:
        status, _out, err = _cli(capsys, ["capture", "--disk", str(source.image), "-o", str(ro / "set")])
    finally:
        run(["umount", ro])
    assert status == 1
    assert err.splitlines()[0] == f"compose-initrd: error: cannot write to the output {ro / 'set'}: " \
        "Read-only file system"  # fmt: skip
    assert len(err.splitlines()) == 2 and "Traceback" not in err
    missing = tmp_path / "none.img"
    status, _out, err = _cli(capsys, ["capture", "--disk", str(missing), "-o", str(tmp_path / "s")])
    assert status == 1 and err.startswith(f"compose-initrd: error: no such disk image: {missing}")
    _nothing_left(source.image)


def test_interrupted_capture_leaves_no_manifest(
    source: SourceImage, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "set"
    argv = ["capture", "--disk", str(source.image), "-o", str(out), "--no-progress"]
    status, _out, err = _cli(capsys, argv)
    assert status == 0, err
    assert (out / MANIFEST_NAME).is_file()  # a complete set, captured again below
    real = archive_write._DiskWalk.write_entry

    def interrupted(self: Any, write_p: Any, rel: str, path: bytes) -> Any:
        if rel == "etc":  # ^C while the root's archive is being written, in its child process:
            os.kill(os.getppid(), signal.SIGINT)  # the terminal sends it to the capture command
            time.sleep(60)  # (its children ignore it), which stops this one
        return real(self, write_p, rel, path)

    monkeypatch.setattr(archive_write._DiskWalk, "write_entry", interrupted)
    # ^C raises KeyboardInterrupt, as in a shell (a test runner's worker may ignore SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status, _out, err = _cli(capsys, argv)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert status == 130 and err == "compose-initrd: error: interrupted\n"
    assert not (out / MANIFEST_NAME).exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no .part, no .tmp
    _nothing_left(source.image)


def test_refused_layout_entries_are_captured_with_a_warning(
    source: SourceImage, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def with_luks(*args: Any, **kwargs: Any) -> dict[str, Any]:
        doc = collect_layout(*args, **kwargs)
        doc["refused"].append({"kind": "signature", "name": "/dev/sdz1", "reason": "LUKS encrypted"})
        return doc

    monkeypatch.setattr(mount_source, "collect_layout", with_luks)
    status, _out, err = _cli(capsys, ["capture", "--disk", str(source.image), "-o", str(tmp_path / "set"),
                                      "--no-progress"])  # fmt: skip
    assert status == 0
    assert err == ("compose-initrd: warning: a restore will refuse this set (LUKS encrypted (/dev/sdz1)); "
                   "capturing it anyway\n")  # fmt: skip
    assert set_layout(tmp_path / "set", load_set(tmp_path / "set"))["refused"][0]["name"] == "/dev/sdz1"


@contextmanager
def _live_machine(source: SourceImage, base: Path) -> Iterator[Path]:
    """A writable copy of the image, mounted as the machine would be under base/live, with a
    tmpfs on /tmp and a bind mount of /srv/data on /mnt."""
    image = base / "live.img"
    run(["cp", "--sparse=always", source.image, image])
    live = base / "live"
    live.mkdir()
    loop = run(["losetup", "-f", "--show", image]).stdout.decode().strip()
    with ExitStack() as stack:
        stack.callback(run, ["losetup", "-d", loop])
        run(["partx", "-a", loop])
        stack.callback(run, ["partx", "-d", loop])
        mounts: list[list[str | Path]] = [
            ["mount", f"{loop}p4", live], ["mount", f"{loop}p2", live / "boot"],
            ["mount", "-o", "nouuid", f"{loop}p5", live / "srv"],
            ["mount", "-t", "tmpfs", "none", live / "tmp"],
            ["mount", "--bind", live / "srv" / "data", live / "mnt"],
        ]  # fmt: skip
        for argv in mounts:
            run(argv)
            stack.callback(run, ["umount", argv[-1]])
        yield live


def test_capture_a_live_tree_mounted_on_the_host(
    source: SourceImage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _live_machine(source, tmp_path) as live:
        out = live / "srv" / "backup" / "set"  # inside a captured filesystem: left out of its archive
        status, stdout, err = _cli(capsys, ["capture", "--root", str(live), "-o", str(out), "--dry-run"])
        assert status == 0, err
        assert "skipped: /tmp (tmpfs, none): in memory" in stdout
        assert f"skipped: /mnt (xfs, {stdout.split('srv   ')[1].split()[0]}): /data of" in stdout
        assert "  srv: excludes /backup/set" in stdout
        status, stdout, err = _cli(capsys, ["capture", "--root", str(live), "-o", str(out), "--threads", "1"])
        assert status == 0, err
        assert stdout.startswith(f"captured 3 filesystems into {out}")
        manifest = load_set(out)
        srv = {r.path for r in manifest.archive("srv").files}
        assert "backup" in srv and not any(p.startswith("backup/") for p in srv) and "data/file0.bin" in srv
        tmp = {r.path for r in manifest.archive("root").files if r.path.startswith("tmp")}
        # The root filesystem as it is: its own tmp (with what the tmpfs mounted there hides),
        # not the tmpfs's files.
        assert tmp == {"tmp", "tmp/sock"}
        assert not list(out.glob(".capture-views-*"))  # the bind mounts it read through are gone
        layout = set_layout(out, manifest)
        assert sorted(str(fs["archive"]) for fs in layout["filesystems"]) == ["None", "boot", "root", "srv"]
        assert all(fs["used_bytes"] for fs in layout["filesystems"] if fs["archive"])
        _extract(out, "boot", tmp_path / "restored-boot")
        assert _rsync_differences(live / "boot", tmp_path / "restored-boot") == ""


def test_layout_verb(source: SourceImage, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(source.image)
    status, stdout, err = _cli(capsys, ["layout", "--disk", image, "--gap-dir", str(tmp_path)])
    assert status == 0, err
    doc = load_layout(stdout)
    assert sorted(fs["type"] for fs in doc["filesystems"]) == ["ext4", "ext4", "swap", "xfs"]
    assert (tmp_path / "disk-disk.img-part1-bios-boot.bin").read_bytes()[:4096] == source.bios_boot
    assert json.loads(stdout)["disks"][0]["image"] is True
    status, _out, err = _cli(capsys, ["layout", "--disk", image, "--gap-dir", str(tmp_path / "none")])
    assert status == 1 and "not a directory" in err
