"""`expert` with the restore set over HTTP: the shell's `restore STEP` commands typed one by
one over the serial console, as a ReaR shell user would: a step out of order and a step that
does not exist are refused with a hint, then plan, partition, mkfs, extract, bootloader and
verify run each as its own command (each a new process, reading what the previous one saved),
and the disk they made boots to the source's marker on its controller (virtio-scsi)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.http_test_server import Scenario, directory_files, serving
from tests.image_fixtures import BuiltImage
from tests.restore_fixtures import (
    GIB,
    RESTORE_MARKS,
    RESTORE_TIMEOUT_S,
    SCSI,
    CapturedSet,
    blank_disk,
    boots_to_marker_on,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures", "tests.restore_fixtures")
pytestmark = RESTORE_MARKS
# Typed into the expert shell one by one, each once the previous one's marker line came.
STEPS = (
    "restore partition",  # refused: no plan yet
    "restore frobnicate",  # no such step
    "restore plan",
    "restore status",
    "restore partition",
    "restore mkfs",
    "restore extract",
    "restore bootloader",
    "restore verify",
    "restore status",
)


def test_expert_restore_steps_one_by_one_make_a_disk_that_boots(
    all_nics_image: BuiltImage, captured: CapturedSet, tmp_path: Path
) -> None:
    disk = blank_disk(tmp_path / "scsi.img", 7 * GIB)
    replies, trigger = [], "starting a shell (expert mode)"
    for i, command in enumerate(STEPS):
        replies.append(qemu_boot.Reply(trigger, f'{command}; echo "STEP-""{i}" rc=$?\n'))
        trigger = f"STEP-{i} rc="
    replies.append(qemu_boot.Reply(trigger, "sync; poweroff -f\n"))
    devices = ["-drive", f"file={disk},format=raw,if=none,id=d0", *SCSI,
               "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]  # fmt: skip
    with serving(Scenario(files=directory_files(captured.set_dir, "/set/"))) as base:
        url = base.replace("127.0.0.1", "10.0.2.2") + "/set/"
        result = qemu_boot.boot(Path(f"/boot/vmlinuz-{all_nics_image.version}"), all_nics_image.path,
                                f"console=ttyS0 expert url={url} ip=dhcp media_timeout=60", devices,
                                timeout=RESTORE_TIMEOUT_S, until="reboot: Power down", replies=replies,
                                memory_mb=1536)  # fmt: skip
    lines = list(result.lines)
    log = "\n".join(lines[-80:])
    assert result.reason == "matched", log
    codes = [int(m.group(1)) for line in lines if (m := re.search(r"STEP-\d+ rc=(\d+)", line))]
    assert codes == [1, 2, 0, 0, 0, 0, 0, 0, 0, 0], log
    text = "\n".join(lines)
    assert f"restore set {url}" in text and "`restore plan` in the shell starts a restore" in text
    assert "restore partition refused: `restore partition` needs `restore plan` first" in text
    assert "restore: there is no step 'frobnicate'" in text and "hint: `restore help` lists the steps" in text
    assert "restore plan: nothing written; `restore partition` writes /dev/sda" in text
    assert any(line.rstrip().endswith("restore status: done: plan") for line in lines), log
    assert re.search(r"restore extract: \d{4,} files, [\d.]+ MB restored and verified", text), log
    verify = next(line for line in lines if "restore verify:" in line and "differ from the manifest" in line)
    assert re.search(r"restore verify: \d+ files, 0 differ from the manifest; \d+ changed by", verify), verify
    assert "restore status: done: plan, partition, mkfs, extract, verify, bootloader" in text, log
    assert "restore status: written: partition tables on /dev/sda; filesystems" in text, log
    boots_to_marker_on(disk, SCSI, "/dev/sda3")
