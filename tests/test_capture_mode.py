"""The rescue image's `capture` mode writing to an NFS export (the source-machine tests write
to a disk by label): a small machine of one GPT disk with an ext4 root, captured over
`capture_to=10.0.2.2:/capture` into an nfs-ganesha export, then checked from the host with
the set reader and rsync against the source filesystem itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from initrd_composer.boot.restore_set.extract import extract_archive
from initrd_composer.boot.restore_set.manifest import load_set
from initrd_composer.runner import run
from tests.disk_trees import rsync_differences
from tests.image_fixtures import BuiltImage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import nfs_server
import qemu_boot

pytest_plugins = ("tests.image_fixtures",)
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("source-machine")]

ROOT_UUID = "0b5e7a3c-2d41-4f6e-9a8b-1c2d3e4f5a60"
MIB = 1 << 20


def _machine(tmp_path: Path) -> Path:
    """A 128 MiB disk: GPT, one ext4 partition from 1 MiB made with mkfs.ext4 -d (no mount)."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "fstab").write_text(f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n")
    (tree / "etc" / "hostname").write_text("small\n")
    (tree / "srv").mkdir()
    for i in range(50):
        (tree / "srv" / f"file-{i}").write_bytes(bytes(range(256)) * (i + 1))
    (tree / "srv" / "link").symlink_to("file-1")
    disk = tmp_path / "small.img"
    with open(disk, "wb") as f:
        f.truncate(128 * MIB)
    run(["sfdisk", "--quiet", disk], input_bytes=b"label: gpt\nstart=2048, type=linux, name=root\n")
    size_kib = (128 * MIB - 2 * MIB) // 1024
    run(["mkfs.ext4", "-q", "-F", "-U", ROOT_UUID, "-L", "root", "-E", f"offset={MIB}", "-d", tree, disk,
         f"{size_kib}k"])  # fmt: skip
    return disk


def test_capture_to_an_nfs_export(all_nics_image: BuiltImage, tmp_path: Path) -> None:
    disk = _machine(tmp_path)
    export = tmp_path / "export"
    export.mkdir()
    server = nfs_server.NfsServer(tmp_path / "nfs", [nfs_server.Export(export, "/capture", writable=True)],
                                  port_wait=1200)  # fmt: skip
    with server:
        result = qemu_boot.boot(
            Path(f"/boot/vmlinuz-{all_nics_image.version}"), all_nics_image.path,
            "console=ttyS0 capture capture_to=10.0.2.2:/capture ip=dhcp restore_then=poweroff",
            ["-drive", f"file={disk},format=raw,if=virtio,snapshot=on",
             "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"],
            timeout=300, until="power off now",
        )  # fmt: skip
    lines = list(result.lines)
    ok = result.reason == "matched" and any("stage: capture ok" in line for line in lines)
    assert ok, "\n".join(lines[-60:])
    report = json.loads([line for line in lines if line.startswith("hwreport: ")][-1].split(": ", 1)[1])
    assert report["capture"]["ok"] and report["capture"]["to"] == "10.0.2.2:/capture"
    set_dir = export / "restore-set"
    manifest = load_set(set_dir)
    assert [a.name for a in manifest.archives] == ["root"]
    layout = json.loads((set_dir / "layout.json").read_text())
    assert [(fs["uuid"], fs["archive"]) for fs in layout["filesystems"]] == [(ROOT_UUID, "root")]
    restored = tmp_path / "restored"
    restored.mkdir()
    extract_archive(set_dir / "root.pax.zst", restored, manifest.archive("root"))
    source = tmp_path / "source"
    source.mkdir()
    loop = run(["losetup", "-r", "-f", "--show", "-o", str(MIB), disk]).stdout.decode().strip()
    try:
        run(["mount", "-t", "ext4", "-o", "ro,noload", loop, source])
        try:
            assert rsync_differences(source, restored) == []
        finally:
            run(["umount", source])
    finally:
        run(["losetup", "-d", loop])
