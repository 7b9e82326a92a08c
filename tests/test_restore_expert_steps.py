"""The expert shell's `restore STEP` (boot/restore/expert_steps.py, step_command.py) without a
machine: which step may follow which, what a step run again undoes, the disks a later step
checks against the plan's, and the command's answers to a wrong or early step (one line and
a hint, never a traceback, nothing run). The steps themselves run in a real QEMU boot
(tests/test_restore_expert.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from initrd_composer.boot.restore import expert_steps, step_command
from initrd_composer.boot.restore.expert_steps import (
    disk_dict,
    disk_from,
    disks_changed,
    done_after,
    new_state,
    order_problem,
    status_lines,
    to_go,
)
from initrd_composer.boot.restore.model import TargetDisk

SDA = TargetDisk("sda", 8 << 30, 512, wwn="naa.1", serial="S1", transport="sata")
SDB = TargetDisk("sdb", 4 << 30, 512, serial="S2", holds_restore_set=True)


def test_each_step_needs_the_one_before_it() -> None:
    assert order_problem("plan", []) is None
    refused = order_problem("mkfs", ["plan"])
    assert refused is not None and refused.message == "`restore mkfs` needs `restore partition` first"
    assert refused.hint == "run `restore partition`"
    assert order_problem("bootloader", ["plan", "partition", "mkfs", "extract"]) is None
    assert order_problem("verify", ["plan", "partition", "mkfs"]) is not None


def test_a_step_run_again_undoes_the_later_ones_and_verify_undoes_nothing() -> None:
    every = ["plan", "partition", "mkfs", "extract", "verify", "bootloader"]
    assert done_after("partition", every) == ["plan", "partition"]
    assert done_after("extract", every) == ["plan", "partition", "mkfs", "extract"]
    assert done_after("verify", ["plan", "partition", "mkfs", "extract", "bootloader"]) == every
    assert done_after("plan", every) == ["plan"]
    assert to_go(["plan", "partition"]) == ["mkfs", "extract", "bootloader"]
    assert to_go([]) == ["plan", "partition", "mkfs", "extract", "bootloader"]


def test_a_planned_disk_gone_or_replaced_is_named_and_an_unused_one_ignored() -> None:
    assert disk_from(disk_dict(SDB)) == SDB
    assert disk_from({**disk_dict(SDA), "added_later": 1}) == SDA
    bigger = TargetDisk("sda", 16 << 30, 512, wwn="naa.1", serial="S1")
    assert disks_changed([SDA, SDB], [SDA, SDB], ["sda"]) == []
    assert disks_changed([SDA, SDB], [bigger], ["sda"]) == ["/dev/sda is not the disk the plan was made on"]
    assert disks_changed([SDA, SDB], [SDB], ["sda"]) == ["/dev/sda is gone"]
    assert disks_changed([SDA, SDB], [SDA], ["sda"]) == []  # sdb is not written: no matter


def test_status_says_where_the_steps_stand() -> None:
    assert status_lines(None) == ["no restore step run yet: `restore plan` starts"]
    plan = {"mapping": [{"source": "vda", "target": "sda"}]}
    state = new_state({"url": "http://u:pw@h/set/", "devices": []}, "http://h/set/", False, [SDA], plan)
    state["done"] = ["plan", "partition"]
    state["written"]["disks"] = ["/dev/sda"]
    assert status_lines(state) == [
        "restore set: http://h/set/",
        "plan: vda -> sda (noresize)",
        "done: plan, partition",
        "next: restore mkfs",
        "written: partition tables on /dev/sda",
    ]
    assert all("pw" not in line for line in status_lines(state))


@pytest.fixture
def no_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(step_command, "STATE", tmp_path / "steps.json")
    monkeypatch.setattr(step_command, "SOURCE_NOTE", tmp_path / "restore-source.json")
    return tmp_path


def test_a_wrong_or_early_step_is_one_line_and_a_hint(
    no_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert step_command.main(["frobnicate"]) == 2
    assert step_command.main(["extract"]) == 1
    assert step_command.main(["plan"]) == 1  # no set noted by the boot
    assert step_command.main(["status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "initrd-composer: restore: there is no step 'frobnicate'",
        "initrd-composer: hint: `restore help` lists the steps",
        "initrd-composer: restore extract refused: `restore extract` needs `restore mkfs` first",
        "initrd-composer: hint: run `restore mkfs`",
        f"initrd-composer: restore plan refused: no restore set noted in {no_state}/restore-source.json: "
        "the boot's media stage found none",
        "initrd-composer: hint: boot again with `expert` and the medium's parameters (nfsmount=, url=, "
        "restore_set=)",
        "initrd-composer: restore status: no restore step run yet: `restore plan` starts",
    ]
    assert not (no_state / "steps.json").exists()


def test_help_lists_every_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert step_command.main(["help"]) == 0
    assert step_command.main([]) == 2
    out = capsys.readouterr().out
    for step in expert_steps.SAYS:
        assert f"  {step} " in out
