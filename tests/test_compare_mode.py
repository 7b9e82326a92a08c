"""`compare` on a restored disk that was changed since: a copy of the NVMe disk `nuke` restored
(tests/restore_fixtures.nvme_restored), with one file of its /boot changed, one deleted and
one added from the host; the rescue image boots in `compare` mode with the set over NFS and
must report all three (and otherwise only what the restore's own fix-ups changed), report the
layout's differences (the disk is larger than the source's), and leave every byte of the disk
as it was."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.runner import run
from tests.disk_trees import sparse_sha256
from tests.image_fixtures import BuiltImage
from tests.restore_fixtures import NVME_DEVICE, RESTORE_TIMEOUT_S, RestoredDisk, SetExports, last_report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures", "tests.restore_fixtures")
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("source-machine"), pytest.mark.timeout(2400)]


@contextlib.contextmanager
def _boot_partition(disk: Path, tmp_path: Path) -> Iterator[Path]:
    """Partition 2 of the disk (its ext4 /boot) mounted read-write on the host."""
    table = json.loads(run(["sfdisk", "--json", disk]).stdout.decode())["partitiontable"]
    part = next(p for p in table["partitions"] if p["node"].endswith("2"))
    sector = int(table.get("sectorsize", 512))
    loop = run(["losetup", "-f", "--show", "-o", str(part["start"] * sector),
                "--sizelimit", str(part["size"] * sector), disk]).stdout.decode().strip()  # fmt: skip
    mnt = tmp_path / "boot"
    mnt.mkdir()
    try:
        run(["mount", "-t", "ext4", loop, mnt])
        try:
            yield mnt
        finally:
            run(["umount", mnt])
    finally:
        run(["losetup", "-d", loop])


def _compare_boot(image: BuiltImage, export: str, disk: Path) -> tuple[list[str], dict[str, Any]]:
    append = (f"console=ttyS0 compare nfsmount=10.0.2.2:{export} ip=dhcp restore_then=poweroff"
              " media_timeout=60")  # fmt: skip
    devices = ["-drive", f"file={disk},format=raw,if=none,id=d0", *NVME_DEVICE,
               "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]  # fmt: skip
    result = qemu_boot.boot(Path(f"/boot/vmlinuz-{image.version}"), image.path, append, devices,
                            timeout=RESTORE_TIMEOUT_S, until='"compare":{', memory_mb=1536)  # fmt: skip
    lines = list(result.lines)
    assert result.reason == "matched", "\n".join(lines[-80:])
    return lines, dict(last_report(lines)["compare"])


def test_compare_reports_a_changed_a_deleted_and_an_added_file_and_writes_nothing(
    all_nics_image: BuiltImage, nvme_restored: RestoredDisk, set_exports: SetExports, tmp_path: Path
) -> None:
    disk = tmp_path / "changed.img"
    run(["cp", "--sparse=always", nvme_restored.disk, disk])
    with _boot_partition(disk, tmp_path) as boot:
        config = next(boot.glob("config-*"))
        system_map = next(boot.glob("System.map-*"))
        with open(config, "a") as f:
            f.write("# changed by the compare test\n")
        system_map.unlink()
        (boot / "added-by-test").write_text("new\n")
    before = sparse_sha256(disk)
    lines, compare = _compare_boot(all_nics_image, set_exports.good, disk)
    assert sparse_sha256(disk) == before, "compare wrote to the disk"
    assert compare["ok"] and any(line.startswith("stage: compare ok") for line in lines), compare
    fixups = nvme_restored.restore["fixups"]["changed"]
    changed = {c["path"] for c in compare["changed"]}
    assert f"/boot/{config.name}" in changed, compare["changed"]
    assert set(compare["missing"]) - set(fixups) == {f"/boot/{system_map.name}"}, compare["missing"]
    assert set(compare["extra"]) - set(fixups) == {"/boot/added-by-test"}, compare["extra"]
    # besides the test's change, only the fix-ups' files and the /boot directory (its mtime)
    assert changed - set(fixups) - {f"/boot/{config.name}", "/boot"} == set(), compare["changed"]
    assert compare["files_compared"] == nvme_restored.restore["files"]
    layout = compare["layout"]
    assert "disk vda -> nvme0n1: size 6.0 GiB -> 10.0 GiB" in layout, layout
    assert not [line for line in layout if "is missing" in line], layout
    assert compare["not_compared"] == []
    assert compare["report"] == "/run/initrd-composer/compare.txt"
