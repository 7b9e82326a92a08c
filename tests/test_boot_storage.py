"""The storage stage in a real boot. The host kernel has neither md nor device-mapper, so the
disks are made inside a guest: the --all-nics image in expert mode creates a RAID1 of two
disks under another machine's host name (a foreign array, as on replacement hardware), a VG
on the array and one on a third disk, and powers off. Then `probe` boots of those disks
(snapshot=on: the images stay as made) must report them in the hwreport's `storage` section.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from initrd_composer.runner import run
from tests.image_fixtures import BuiltImage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures",)
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("storage")]

MiB = 1 << 20
# Typed into the expert shell one by one, each once the previous one's marker line came.
MAKE_DISKS = (
    "mdadm --create /dev/md0 --level=1 --raid-devices=2 --metadata=1.2 --homehost=sourcebox"
    " --name=rescue-test --assume-clean --run /dev/vda /dev/vdb",
    "lvm pvcreate /dev/md0 /dev/vdc && lvm vgcreate vgtest /dev/md0 && lvm vgcreate vgsolo /dev/vdc",
    "lvm lvcreate -L 8M -n lvdata vgtest && lvm lvcreate -L 12M -n lvone vgsolo",
    "mdadm --detail --export /dev/md0 | grep -E '^MD_(UUID|NAME)='",
    "lvm vgchange -an && mdadm --stop /dev/md0 && sync && poweroff -f",
)


@dataclass(frozen=True)
class Disks:
    paths: tuple[Path, Path, Path]  # md member, md member, a PV of its own
    uuid: str  # the array's, as mdadm printed it when it made it
    name: str


def _disk_args(paths: tuple[Path, ...]) -> list[str]:
    args: list[str] = []
    for i, path in enumerate(paths):
        args += ["-drive", f"file={path},format=raw,if=none,snapshot=on,id=d{i}",
                 "-device", f"virtio-blk-pci,drive=d{i}"]
    return args


def _blank(directory: Path, count: int) -> tuple[Path, ...]:
    paths = tuple(directory / f"disk{i}.img" for i in range(count))
    for path in paths:
        run(["qemu-img", "create", "-q", "-f", "raw", path, "64M"])
    return paths


@pytest.fixture(scope="session")
def storage_disks(all_nics_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Disks:
    a, b, c = _blank(tmp_path_factory.mktemp("storage-disks"), 3)
    replies, trigger = [], "starting a shell (expert mode)"
    for i, command in enumerate(MAKE_DISKS):
        replies.append(qemu_boot.Reply(trigger, f'{command}; echo "STEP-""{i}" rc=$?\n'))
        trigger = f"STEP-{i} rc="
    devices = []
    for i, path in enumerate((a, b, c)):  # written for good: no snapshot
        devices += ["-drive", f"file={path},format=raw,if=none,id=d{i}",
                    "-device", f"virtio-blk-pci,drive=d{i}"]
    result = qemu_boot.boot(
        Path(f"/boot/vmlinuz-{all_nics_image.version}"), all_nics_image.path,
        "console=ttyS0 expert media_timeout=1", devices,
        timeout=240, until="reboot: Power down", replies=replies,
    )
    log = "\n".join(result.lines[-60:])
    assert result.reason == "matched", log
    steps = [line for line in result.lines if re.match(r"STEP-\d+ rc=", line)]
    assert steps == [f"STEP-{i} rc=0" for i in range(len(MAKE_DISKS) - 1)], log  # the last one powers off
    values: dict[str, str] = {}
    for line in result.lines:
        if m := re.match(r"(MD_UUID|MD_NAME)=(\S+)$", line):
            values[m.group(1)] = m.group(2)
    assert set(values) == {"MD_UUID", "MD_NAME"}, log
    return Disks((a, b, c), values["MD_UUID"], values["MD_NAME"])


def _probe(image: BuiltImage, disks: tuple[Path, ...]) -> tuple[dict[str, Any], str, list[str]]:
    result = qemu_boot.boot(Path(f"/boot/vmlinuz-{image.version}"), image.path, "console=ttyS0 probe",
                            _disk_args(disks), timeout=180)
    assert result.reason == "matched", "\n".join(result.lines[-40:])
    assert result.matched_line is not None
    report: dict[str, Any] = json.loads(result.matched_line.split(":", 1)[1])
    line = next(ln for ln in result.lines if ln.startswith("stage: storage "))
    return report["storage"], line, list(result.lines)


def _lvs(section: dict[str, Any]) -> dict[str, tuple[list[str], list[tuple[str, str, int, bool]]]]:
    return {vg["vg"]: (vg["pvs"], [(lv["name"], lv["path"], lv["size_bytes"], lv["active"])
                                   for lv in vg["lvs"]])
            for vg in section["lvm"]}


def test_foreign_raid1_and_its_volume_groups_are_started(
    all_nics_image: BuiltImage, storage_disks: Disks
) -> None:
    section, line, _ = _probe(all_nics_image, storage_disks.paths)
    assert section["ok"] and section["errors"] == [] and section["notes"] == [], section
    (md,) = section["md"]
    assert storage_disks.name == "sourcebox:rescue-test"
    assert (md["device"], md["devname"], md["name"], md["uuid"]) == (
        "/dev/md127", "/dev/md/rescue-test", storage_disks.name, storage_disks.uuid)
    assert (md["level"], md["metadata"], md["raid_disks"], md["state"], md["degraded"]) == (
        "raid1", "1.2", 2, "clean", False)
    assert (md["members"], md["spares"], md["faulty"]) == (["/dev/vda", "/dev/vdb"], [], [])
    assert _lvs(section) == {
        "vgsolo": (["/dev/vdc"], [("lvone", "/dev/vgsolo/lvone", 12 * MiB, True)]),
        "vgtest": (["/dev/md127"], [("lvdata", "/dev/vgtest/lvdata", 8 * MiB, True)]),
    }
    assert line == "stage: storage ok md127 raid1 clean (2 members); vgsolo: 1 LV active; vgtest: 1 LV active"


def test_a_missing_member_leaves_the_array_degraded_but_started(
    all_nics_image: BuiltImage, storage_disks: Disks
) -> None:
    first, _, own_pv = storage_disks.paths
    section, line, _ = _probe(all_nics_image, (first, own_pv))  # the own PV is now vdb
    assert section["ok"] and section["errors"] == [], section
    (md,) = section["md"]
    assert (md["uuid"], md["members"], md["raid_disks"]) == (storage_disks.uuid, ["/dev/vda"], 2)
    assert md["degraded"] and md["state"] == "clean, degraded"
    # the VG on the degraded array is as usable as before
    assert _lvs(section)["vgtest"] == (["/dev/md127"], [("lvdata", "/dev/vgtest/lvdata", 8 * MiB, True)])
    assert _lvs(section)["vgsolo"][0] == ["/dev/vdb"]
    assert line.startswith("stage: storage ok md127 raid1 clean, degraded (1 of 2 members); ")


def test_blank_disks_give_an_empty_section_quickly(
    all_nics_image: BuiltImage, tmp_path: Path
) -> None:
    section, line, _ = _probe(all_nics_image, _blank(tmp_path, 2))
    assert (section["ok"], section["md"], section["lvm"], section["errors"]) == (True, [], [], []), section
    assert section["notes"] == ["no LVM label on any block device; LVM not run"]
    assert line == "stage: storage ok no RAID or LVM on the disks"
    assert section["seconds"] < 5, section  # mdadm alone: about 0.1-0.6 s under TCG
