"""The storage stage on a fake /proc, /sys and /dev (md sysfs and PV headers from the captures
in tests/data/storage) with a runner that answers as the real tools did: what it runs, in
which order and with which bounds, what it reports, and its console detail."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from initrd_composer.boot.commands import CommandResult
from initrd_composer.boot.storage.assemble import (
    ACTIVATE_ARGV,
    ASSEMBLE_ARGV,
    FULLREPORT_ARGV,
    MKNODES_ARGV,
    StorageOptions,
    run_storage,
    storage_detail,
)
from initrd_composer.runner import run
from tests.test_boot_storage_parse import DATA, UUID, data, md_dir_from_capture

DETAIL_ARGV = ("mdadm", "--detail", "--export", "/dev/md127")
NOTHING = CommandResult(ASSEMBLE_ARGV, 1, data("mdadm-assemble-blank-disks.txt"))


class Runner:
    """Answers by argv; records each call with the timeout it was given."""

    def __init__(self, answers: dict[tuple[str, ...], CommandResult]) -> None:
        self.answers = answers
        self.calls: list[tuple[tuple[str, ...], float]] = []

    def __call__(self, argv: Sequence[str], *, timeout_s: float = -1.0) -> CommandResult:
        key = tuple(argv)
        self.calls.append((key, timeout_s))
        return self.answers.get(key, CommandResult(key, 0, ""))

    @property
    def argvs(self) -> list[tuple[str, ...]]:
        return [argv for argv, _ in self.calls]


def ok(argv: tuple[str, ...], output_file: str) -> CommandResult:
    return CommandResult(argv, 0, data(output_file))


def machine(
    tmp_path: Path, disks: dict[str, str], md: str | None = None, mdstat: str | None = None
) -> StorageOptions:
    """/sys/class/block/NAME/size and /dev/NAME (its first bytes from a captured header file,
    or zeros) per disk; with `md`, md127 from a sysfs capture, listed by `mdstat`."""
    sys_root, proc_root, dev_root = tmp_path / "sys", tmp_path / "proc", tmp_path / "dev"
    for d in (sys_root, proc_root, dev_root):
        d.mkdir()
    for name, header in disks.items():
        (sys_root / "class/block" / name).mkdir(parents=True)
        (sys_root / "class/block" / name / "size").write_text("131072\n")
        content = (DATA / header).read_bytes() if header else bytes(2048)
        (dev_root / name).write_bytes(content + bytes(4096))
    if md is not None:
        md_dir_from_capture(sys_root / "block/md127/md", md)
    if mdstat is not None:
        (proc_root / "mdstat").write_text(data(mdstat))
    return StorageOptions(sys_root=str(sys_root), proc_root=str(proc_root), dev_root=str(dev_root))


def with_runner(opts: StorageOptions, runner: Runner) -> StorageOptions:
    return StorageOptions(sys_root=opts.sys_root, proc_root=opts.proc_root, dev_root=opts.dev_root,
                          run=runner, label_scan_timeout_s=opts.label_scan_timeout_s)


def lv_nodes(dev_root: str, *paths: str) -> None:
    for path in paths:
        node = Path(dev_root) / path.removeprefix("/dev/")
        node.parent.mkdir(parents=True, exist_ok=True)
        node.write_bytes(b"")


def raid_and_lvm(tmp_path: Path, *, degraded: bool = False) -> tuple[StorageOptions, Runner]:
    suffix = "-degraded" if degraded else ""
    disks = {"vda": "header-md-member.bin", "vdc": "header-pv-disk.bin", "md127": "header-pv-md.bin"}
    if not degraded:
        disks["vdb"] = "header-md-member.bin"
    opts = machine(tmp_path, disks, md=f"sysfs-md127{suffix}.txt", mdstat=f"mdstat{suffix}.txt")
    (Path(opts.dev_root) / "md").mkdir()
    os.symlink("../md127", Path(opts.dev_root) / "md" / "rescue-test")
    lv_nodes(opts.dev_root, "/dev/vgtest/lvdata", "/dev/vgsolo/lvone", "/dev/vgsolo/lvtwo")
    runner = Runner({
        ASSEMBLE_ARGV: ok(ASSEMBLE_ARGV, "mdadm-assemble.txt"),
        DETAIL_ARGV: ok(DETAIL_ARGV, f"mdadm-detail-export{suffix}.txt"),
        FULLREPORT_ARGV: ok(FULLREPORT_ARGV, "lvm-fullreport.json"),
    })
    return with_runner(opts, runner), runner


def test_array_and_volume_groups_reported_from_kernel_and_tools(tmp_path: Path) -> None:
    opts, runner = raid_and_lvm(tmp_path)
    section = run_storage(opts)
    assert section["ok"] and section["errors"] == [] and section["notes"] == [], section
    assert section["md"] == [{
        "device": "/dev/md127", "devname": "/dev/md/rescue-test", "name": "sourcebox:rescue-test",
        "level": "raid1", "uuid": UUID, "metadata": "1.2", "raid_disks": 2,
        "members": ["/dev/vda", "/dev/vdb"], "spares": [], "faulty": [], "state": "clean", "degraded": False,
    }]
    assert [(vg["vg"], vg["pvs"], [(lv["name"], lv["size_bytes"], lv["active"]) for lv in vg["lvs"]])
            for vg in section["lvm"]] == [
        ("vgsolo", ["/dev/vdc"], [("lvone", 12 << 20, True), ("lvtwo", 4 << 20, True)]),
        ("vgtest", ["/dev/md127"], [("lvdata", 8 << 20, True)]),
    ]
    assert section["lvm"][1]["lvs"][0]["path"] == "/dev/vgtest/lvdata"
    # md first (a PV may sit on an array), dm_mod before LVM; every LV node there: no --mknodes
    modprobe = ("modprobe", "dm_mod")
    assert runner.argvs == [ASSEMBLE_ARGV, DETAIL_ARGV, modprobe, ACTIVATE_ARGV, FULLREPORT_ARGV]
    assert all(0 < timeout <= 60 for _, timeout in runner.calls), runner.calls
    assert storage_detail(section) == (
        "md127 raid1 clean (2 members); vgsolo: 2 LVs active; vgtest: 1 LV active")


def test_degraded_array_is_assembled_and_said_so(tmp_path: Path) -> None:
    opts, _ = raid_and_lvm(tmp_path, degraded=True)
    section = run_storage(opts)
    (md,) = section["md"]
    assert section["ok"] and md["degraded"] and md["state"] == "clean, degraded"
    assert (md["members"], md["raid_disks"]) == (["/dev/vda"], 2)
    assert storage_detail(section).startswith("md127 raid1 clean, degraded (1 of 2 members); ")


def test_nothing_on_the_disks_runs_mdadm_only(tmp_path: Path) -> None:
    runner = Runner({ASSEMBLE_ARGV: NOTHING})
    opts = with_runner(machine(tmp_path, {"vda": "", "vdb": "header-md-member.bin"}), runner)
    section = run_storage(opts)
    assert (section["ok"], section["md"], section["lvm"], section["errors"]) == (True, [], [], [])
    assert section["notes"] == ["no LVM label on any block device; LVM not run"]
    assert runner.argvs == [ASSEMBLE_ARGV]
    assert storage_detail(section) == "no RAID or LVM on the disks"


def test_no_block_device_at_all(tmp_path: Path) -> None:
    runner = Runner({ASSEMBLE_ARGV: CommandResult(ASSEMBLE_ARGV, 1, data("mdadm-assemble-no-disks.txt"))})
    section = run_storage(with_runner(machine(tmp_path, {}), runner))
    assert section["ok"] and section["errors"] == [], section


def test_floppy_cdrom_and_tiny_devices_are_not_read(tmp_path: Path) -> None:
    opts = machine(tmp_path, dict.fromkeys(("fd0", "sr0", "loop0"), "header-pv-disk.bin"))
    (Path(opts.sys_root) / "class/block/loop0/size").write_text("0\n")
    runner = Runner({ASSEMBLE_ARGV: NOTHING})
    assert run_storage(with_runner(opts, runner))["lvm"] == [] and runner.argvs == [ASSEMBLE_ARGV]


def test_assembly_failure_names_what_mdadm_said(tmp_path: Path) -> None:
    failed = CommandResult(ASSEMBLE_ARGV, 1, data("mdadm-assemble-one-member.txt"))
    opts = machine(tmp_path, {"vda": "header-md-member.bin"})
    section = run_storage(with_runner(opts, Runner({ASSEMBLE_ARGV: failed})))
    assert not section["ok"]
    (error,) = section["errors"]
    assert error.startswith("mdadm --assemble --scan: ")
    assert "need all 2 to start it (use --run to insist)" in error


def test_partial_volume_group_is_an_error_with_lvm_s_words(tmp_path: Path) -> None:
    opts, runner = raid_and_lvm(tmp_path)
    runner.answers[ACTIVATE_ARGV] = CommandResult(ACTIVATE_ARGV, 5, data("lvm-vgchange-partial.txt"))
    runner.answers[FULLREPORT_ARGV] = ok(FULLREPORT_ARGV, "lvm-fullreport-partial.json")
    section = run_storage(opts)
    assert not section["ok"]
    activate, missing = section["errors"]
    assert activate.startswith("lvm vgchange -ay --sysinit: WARNING: Couldn't find device with uuid 8i8lJF")
    assert "Refusing activation of partial LV vgsolo/lvloop" in activate and "now active" not in activate
    assert missing == "volume group vgsolo misses 1 physical volume(s)"
    vgsolo = section["lvm"][0]
    assert [(lv["name"], lv["active"]) for lv in vgsolo["lvs"]] == [
        ("lvloop", False), ("lvone", True), ("lvtwo", True)]
    assert storage_detail(section).endswith("vgsolo: 2 of 3 LVs active; vgtest: 1 LV active; "
                                            + activate + " (+1 more)")


class MakesNodes(Runner):
    """`vgscan --mknodes` makes the nodes of active LVs, as the real one does."""

    def __init__(self, answers: dict[tuple[str, ...], CommandResult], dev_root: str, *paths: str) -> None:
        super().__init__(answers)
        self.dev_root, self.paths = dev_root, paths

    def __call__(self, argv: Sequence[str], *, timeout_s: float = -1.0) -> CommandResult:
        if tuple(argv) == MKNODES_ARGV:
            lv_nodes(self.dev_root, *self.paths)
        return super().__call__(argv, timeout_s=timeout_s)


def test_a_missing_lv_node_is_made_by_vgscan_mknodes(tmp_path: Path) -> None:
    opts, runner = raid_and_lvm(tmp_path)
    os.unlink(Path(opts.dev_root) / "vgtest/lvdata")
    makes = MakesNodes(runner.answers, opts.dev_root, "/dev/vgtest/lvdata")
    section = run_storage(with_runner(opts, makes))
    assert section["ok"] and makes.argvs[-2:] == [FULLREPORT_ARGV, MKNODES_ARGV], makes.argvs


def test_active_lv_without_its_node_and_unparsable_report(tmp_path: Path) -> None:
    opts, runner = raid_and_lvm(tmp_path)
    os.unlink(Path(opts.dev_root) / "vgtest/lvdata")
    assert run_storage(opts)["errors"] == ["/dev/vgtest/lvdata is active but has no device node"]
    assert runner.argvs[-2:] == [FULLREPORT_ARGV, MKNODES_ARGV]
    runner.answers[FULLREPORT_ARGV] = CommandResult(FULLREPORT_ARGV, 0, "  Unknown field lv_foo.\n")
    section = run_storage(opts)
    assert section["lvm"] == [] and section["errors"][0].startswith("lvm fullreport: no JSON report")


def test_device_mapper_already_there_is_not_loaded_again(tmp_path: Path) -> None:
    opts, runner = raid_and_lvm(tmp_path)
    (Path(opts.sys_root) / "module/dm_mod").mkdir(parents=True)
    run_storage(opts)
    assert ("modprobe", "dm_mod") not in runner.argvs
    failing = Runner({**runner.answers, ("modprobe", "dm_mod"): CommandResult(("modprobe", "dm_mod"), 1, "")})
    (Path(opts.sys_root) / "module/dm_mod").rmdir()
    section = run_storage(with_runner(opts, failing))
    assert section["errors"] == ["cannot load dm_mod (device-mapper): modprobe dm_mod: exit status 1"]


def test_inactive_array_is_reported_but_a_container_is_not(tmp_path: Path) -> None:
    opts = machine(tmp_path, {"sdc": ""})
    (Path(opts.proc_root) / "mdstat").write_text("Personalities : \nmd127 : inactive sdc[0](S)\n")
    md = Path(opts.sys_root) / "block/md127/md"
    (md / "dev-sdc").mkdir(parents=True)
    (md / "dev-sdc/slot").write_text("none\n")
    (md / "dev-sdc/state").write_text("spare\n")
    (md / "array_state").write_text("inactive\n")
    (md / "raid_disks").write_text("2\n")
    runner = Runner({ASSEMBLE_ARGV: CommandResult(ASSEMBLE_ARGV, 0, "")})
    section = run_storage(with_runner(opts, runner))
    assert section["md"][0]["spares"] == ["/dev/sdc"] and section["md"][0]["state"] == "inactive"
    assert section["errors"] == [
        "/dev/md127 is inactive with 1 of 2 members; `mdadm --run /dev/md127` starts it as it is"]
    (md / "metadata_version").write_text("external:imsm\n")
    assert run_storage(with_runner(opts, runner))["errors"] == []


def test_a_hanging_device_does_not_hold_the_stage(tmp_path: Path) -> None:
    # a FIFO as /dev/vda: opening it blocks until a writer comes, like a read on a dying disk
    opts = machine(tmp_path, {"vda": ""})
    fifo = Path(opts.dev_root) / "vda"
    fifo.unlink()
    os.mkfifo(fifo)
    empty = ok(FULLREPORT_ARGV, "lvm-fullreport-empty.json")
    runner = Runner({ASSEMBLE_ARGV: NOTHING, FULLREPORT_ARGV: empty})
    quick = StorageOptions(sys_root=opts.sys_root, proc_root=opts.proc_root, dev_root=opts.dev_root,
                           run=runner, label_scan_timeout_s=0.3)
    try:
        section = run_storage(quick)
    finally:
        threading.Thread(target=lambda: os.close(os.open(fifo, os.O_WRONLY)), daemon=True).start()
    assert section["notes"] == ["the LVM label scan took over 0.3 s; LVM run anyway"]
    assert FULLREPORT_ARGV in runner.argvs and section["ok"] and section["seconds"] < 5


def test_the_image_lvm_conf_is_valid_for_the_lvm_it_carries() -> None:
    # the image carries the host's lvm, so the host's lvmconfig is the judge (LVM only warns
    # about a setting it does not know, and then uses its default)
    conf_dir = Path(__file__).resolve().parent.parent / "skeleton/rootfs/etc/lvm"
    env = {"LVM_SYSTEM_DIR": str(conf_dir), "LVM_SUPPRESS_FD_WARNINGS": "1"}
    checked = run(["lvmconfig", "--validate"], env=env).stdout.decode()
    assert "LVM configuration valid" in checked
    merged = run(["lvmconfig", "--typeconfig", "full", "devices/obtain_device_list_from_udev",
                  "activation/udev_sync", "activation/udev_rules", "activation/monitoring",
                  "global/use_lvmpolld"], env=env).stdout.decode().split()
    assert merged == ["obtain_device_list_from_udev=0", "udev_sync=0", "udev_rules=0", "monitoring=0",
                      "use_lvmpolld=0"]
