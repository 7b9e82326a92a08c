"""LVM text metadata (boot/restore/lvm_metadata.py): read and written back on the real
vgcfgbackup files in tests/data/layout, laid out again for new PVs, and put onto loop devices
by the real pvcreate and vgcfgrestore, then read back with lvs/pvs/vgs. The host kernel has no
device-mapper: LVM writes and reads metadata with `--driverloaded n` and activates nothing;
`--devices` keeps it to the test's loop devices and a private LVM_SYSTEM_DIR keeps it out of
/etc/lvm (no backup or archive written)."""

from __future__ import annotations

import json
import os
import random
import shutil
import string
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.disk_map import DiskAssignment
from initrd_composer.boot.restore.lvm_metadata import (
    Section,
    dump_metadata,
    parse_metadata,
    pvcreate_argv,
    restore_metadata,
    vgcfgrestore_argv,
)
from initrd_composer.boot.restore.model import MIB, LogicalVolume, SourceDisk, TargetDisk, VolumeGroup
from initrd_composer.boot.restore.sizing import DiskPlan, LvPlan, PartitionPlan, VgPlan, size_vg
from initrd_composer.capture.layout.volumes import lvm_summary
from initrd_composer.runner import run
from tests.layout_fixtures import layout_data

VGCAP = layout_data("vgcfgbackup-vgcap.txt")
PV0, PV1 = "51acgN-xP7x-7NpQ-eGRo-CawA-rdFv-Rf7ALU", "eqqqKp-WuPm-01qy-t258-MTAB-aXcG-e58S7L"
VG_ID = "oO9IPN-fBNs-QeMh-4Vp3-n3pB-uPQn-vJkVFE"
EXTENT = 4 * MIB


def _sec(value: object) -> Section:
    assert isinstance(value, dict)
    return value


def _num(value: object) -> int:
    assert isinstance(value, int)
    return value


def _vg(tree: Section) -> Section:
    return _sec(tree["vgcap"])


def _subs(section: object) -> dict[str, Section]:
    return {k: _sec(v) for k, v in _sec(section).items() if isinstance(v, dict)}


def _lvs(tree: Section) -> dict[str, Section]:
    return _subs(_vg(tree)["logical_volumes"])


def _segments(lv: Section) -> list[Section]:
    return [_sec(v) for k, v in lv.items() if k.startswith("segment") and isinstance(v, dict)]


@pytest.mark.parametrize("name", ["vgcfgbackup-vgcap.txt", "vgcfgbackup-thin-snapshot.txt"])
def test_parse_dump_parse_is_the_same_tree(name: str) -> None:
    tree = parse_metadata(layout_data(name))
    text = dump_metadata(tree)
    assert parse_metadata(text) == tree
    assert "# 4 Megabytes" not in text and tree["contents"] == "Text Format Volume Group"


def test_the_tree_holds_what_vgcfgbackup_wrote() -> None:
    tree = parse_metadata(VGCAP)
    vg = _vg(tree)
    assert _subs(vg["physical_volumes"])["pv0"] == {
        "id": PV0, "device": "/dev/loop0", "status": ["ALLOCATABLE"], "flags": [], "dev_size": 131072,
        "pe_start": 2048, "pe_count": 15,
    }  # fmt: skip
    (seg,) = _segments(_lvs(tree)["striped"])
    assert seg["stripes"] == ["pv0", 2, "pv1", 0] and seg["stripe_size"] == 128
    assert (vg["seqno"], vg["extent_size"], vg["status"]) == (6, 8192, ["RESIZEABLE", "READ", "WRITE"])


def test_strings_escapes_and_syntax_errors() -> None:
    tree = parse_metadata('a = "say \\"hi\\" \\\\ # not a comment"  # a comment\nb = [-1, "x",]\nc {\n}\n')
    assert tree == {"a": 'say "hi" \\ # not a comment', "b": [-1, "x"], "c": {}}
    assert parse_metadata(dump_metadata(tree)) == tree
    for bad, where in (("a = ", "end"), ("a {\n b = 1\n", "not closed"), ("a = b", "number or a string"),
                       ("a = 1\na = 2", "new key"), ("a = [1 2]", "expected , or ]")):  # fmt: skip
        with pytest.raises(RestoreRefused, match=where):
            parse_metadata(bad)


def plan(**extents: int) -> VgPlan:
    lvs = tuple(LvPlan(name, False, 8 * MIB, n, EXTENT) for name, n in extents.items())
    return VgPlan("vgcap", EXTENT, 30, sum(extents.values()), lvs)


def _sizes(pv0_mib: int, pv1_mib: int) -> dict[str, int]:
    return {PV0: pv0_mib * MIB, PV1: pv1_mib * MIB}


def test_pvs_get_their_new_size_and_lvs_a_new_layout() -> None:
    tree = parse_metadata(restore_metadata(VGCAP, plan(lvroot=8, striped=7), _sizes(40, 24)))
    pvs = _subs(_vg(tree)["physical_volumes"])
    assert [(pv["id"], pv["dev_size"], pv["pe_start"], pv["pe_count"]) for pv in pvs.values()] == [
        (PV0, 81920, 2048, 9), (PV1, 49152, 2048, 5)]  # fmt: skip
    lvs = _lvs(tree)
    # Striped first, a stripe per PV, rounded down to whole stripes (7 -> 6 extents).
    assert _segments(lvs["striped"]) == [{"start_extent": 0, "extent_count": 6, "type": "striped",
                                          "stripe_count": 2, "stripe_size": 128,
                                          "stripes": ["pv0", 0, "pv1", 0]}]  # fmt: skip
    # Then linear, filling pv0 and then pv1: a segment each.
    assert [(s["start_extent"], s["extent_count"], s["stripes"]) for s in _segments(lvs["lvroot"])] == [
        (0, 6, ["pv0", 3]), (6, 2, ["pv1", 3])]  # fmt: skip
    assert lvs["lvroot"]["segment_count"] == 2
    assert lvs["lvroot"]["id"] == "nJR3oM-heog-Hidz-GU3K-DtGK-YVrC-lo0T0p"
    assert _vg(tree)["seqno"] == 1 and _vg(tree)["id"] == VG_ID


def test_what_the_new_pvs_cannot_hold_is_refused() -> None:
    with pytest.raises(RestoreRefused, match="vgcap/lvroot needs 20 extents; the PVs have 12 free"):
        restore_metadata(VGCAP, plan(lvroot=20, striped=2), _sizes(40, 24))
    with pytest.raises(RestoreRefused, match=r"vgcap/striped needs 2 stripes of 6 extents.*pv0 9, pv1 5"):
        restore_metadata(VGCAP, plan(lvroot=2, striped=12), _sizes(40, 24))
    # A PV too small for even its label and metadata area: no extents at all.
    with pytest.raises(RestoreRefused, match="pv1 0"):
        restore_metadata(VGCAP, plan(lvroot=2, striped=2), _sizes(40, 1))
    with pytest.raises(RestoreRefused, match="has no new device"):
        restore_metadata(VGCAP, plan(lvroot=2, striped=2), {PV0: 40 * MIB})
    with pytest.raises(RestoreRefused, match="differ in logical volumes extra, striped"):
        restore_metadata(VGCAP, plan(lvroot=2, extra=2), _sizes(40, 24))
    with pytest.raises(RestoreRefused, match="not volume group vgcap"):
        restore_metadata(layout_data("vgcfgbackup-thin-snapshot.txt"), plan(lvroot=2), _sizes(40, 24))
    thin = layout_data("vgcfgbackup-thin-snapshot.txt")
    names = ("root", "snapcow", "pool", "thin", "pool_tdata", "pool_tmeta", "lvol0_pmspare", "snapshot0")
    vgref = VgPlan("vgref", EXTENT, 15, 15, tuple(LvPlan(n, False, 0, 1, EXTENT) for n in names))
    with pytest.raises(RestoreRefused, match="vgref/pool has segment type thin-pool"):
        restore_metadata(thin, vgref, {"xh8SGV-Vz4S-f4D6-nqhc-EqRc-Xrpg-WRMS6j": 64 * MIB})


def test_an_unallocatable_pv_takes_no_stripe() -> None:
    head, _, tail = VGCAP.rpartition('status = ["ALLOCATABLE"]')  # pv1's
    with pytest.raises(RestoreRefused, match=r"needs 2 stripes of 1 extents, each on its own PV.*pv1 0"):
        restore_metadata(head + "status = []" + tail, plan(lvroot=2, striped=2), _sizes(40, 24))


def test_the_argv() -> None:
    assert pvcreate_argv("/dev/sda3", PV0, "/tmp/vg.txt") == [
        "lvm", "pvcreate", "-ff", "-y", "--uuid", PV0, "--restorefile", "/tmp/vg.txt", "/dev/sda3",
    ]  # fmt: skip
    assert vgcfgrestore_argv("vgcap", "/tmp/vg.txt", ["--devices", "/dev/sda3"]) == [
        "lvm", "vgcfgrestore", "--devices", "/dev/sda3", "-f", "/tmp/vg.txt", "vgcap"]  # fmt: skip


# --- the real LVM ----------------------------------------------------------------------------------

LVM_CONF = """\
backup {
\tbackup = 0
\tarchive = 0
}
devices {
\tobtain_device_list_from_udev = 0
\texternal_device_info_source = "none"
\tuse_devicesfile = 0
\thints = "none"
}
activation {
\tudev_sync = 0
\tudev_rules = 0
}
"""
Loops = Callable[..., list[str]]


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Loops]:
    """Make loop devices over sparse files of the sizes given (MiB); detached afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices (marker: root)")
    assert shutil.which("lvm"), "install lvm2"
    made: list[str] = []

    def make(*mib: int) -> list[str]:
        out = []
        for size in mib:
            image = tmp_path / f"pv{len(made)}.img"
            with open(image, "wb") as f:
                f.truncate(size * MIB)
            made.append(run(["losetup", "-f", "--show", str(image)]).stdout.decode().strip())
            out.append(made[-1])
        return out

    try:
        yield make
    finally:
        for loop in made:
            run(["losetup", "-d", loop], check=False)


def _lvm(tmp_path: Path, devices: list[str]) -> tuple[list[str], dict[str, str]]:
    conf = tmp_path / "lvm"
    conf.mkdir(exist_ok=True)
    (conf / "lvm.conf").write_text(LVM_CONF)
    env = {"LVM_SYSTEM_DIR": str(conf), "LVM_SUPPRESS_FD_WARNINGS": "1"}
    return ["--driverloaded", "n", "--devices", ",".join(devices)], env


def _report(what: str, fields: str, options: list[str], env: dict[str, str], *extra: str) -> str:
    units = ["--reportformat", "json", "--units", "b", "--nosuffix"]
    return run(["lvm", what, *options, *extra, *units, "-o", fields], env=env).stdout.decode()


def _lvm_uuid(rnd: random.Random) -> str:
    chars = string.ascii_letters + string.digits
    return "-".join("".join(rnd.choice(chars) for _ in range(n)) for n in (6, 4, 4, 4, 4, 4, 6))


# The real tests' VG and PVs get ids of their own per process: LVM commands elsewhere on the
# host (the layout capture's tests, another pytest worker) then never see duplicate PVs.
_RND = random.Random()
RUN_VG, RUN_PV0, RUN_PV1 = (_lvm_uuid(_RND) for _ in range(3))
RUN_VGCAP = VGCAP.replace(VG_ID, RUN_VG).replace(PV0, RUN_PV0).replace(PV1, RUN_PV1)


def _size(device: str) -> int:
    return int(run(["blockdev", "--getsize64", device]).stdout)


def _restore(tmp_path: Path, devices: list[str], vg: VgPlan) -> tuple[Section, list[str], dict[str, str]]:
    sizes = {uuid: _size(dev) for uuid, dev in zip((RUN_PV0, RUN_PV1), devices, strict=True)}
    text = restore_metadata(RUN_VGCAP, vg, sizes)
    backup = tmp_path / "vgcap.txt"
    backup.write_text(text)
    options, env = _lvm(tmp_path, devices)
    for uuid, dev in zip((RUN_PV0, RUN_PV1), devices, strict=True):
        run(pvcreate_argv(dev, uuid, str(backup), options), env=env)
    run(vgcfgrestore_argv("vgcap", str(backup), options), env=env)
    return parse_metadata(text), options, env


def _check_against_lvm(tree: Section, devices: list[str], options: list[str], env: dict[str, str]) -> None:
    (group,) = lvm_summary(
        _report("vgs", "vg_name,vg_uuid,vg_extent_size,vg_size", options, env),
        _report("pvs", "pv_name,pv_uuid,pv_size,vg_name,dev_size,pv_pe_count", options, env),
        _report("lvs", "lv_name,vg_name,lv_uuid,lv_size,segtype,lv_attr,seg_count", options, env),
    )
    vg = _vg(tree)
    assert (group["name"], group["uuid"], group["extent_size_bytes"]) == ("vgcap", vg["id"], EXTENT)
    pvs = {str(pv["id"]): pv for pv in _subs(vg["physical_volumes"]).values()}
    want = dict(zip(devices, (RUN_PV0, RUN_PV1), strict=True))
    assert {pv["device"]: pv["uuid"] for pv in group["pvs"]} == want
    for pv in group["pvs"]:
        assert pv["size_bytes"] == _num(pvs[pv["uuid"]]["pe_count"]) * EXTENT
    lvs = _lvs(tree)
    assert sorted(lv["name"] for lv in group["lvs"]) == sorted(lvs)
    for lv in group["lvs"]:
        mine = lvs[lv["name"]]
        assert lv["uuid"] == mine["id"]
        assert lv["size_bytes"] == sum(_num(s["extent_count"]) for s in _segments(mine)) * EXTENT
        striped = _num(_segments(mine)[0]["stripe_count"]) > 1
        assert set(lv["segtypes"]) == {"striped" if striped else "linear"}
    # Each segment where the rewritten metadata put it: LVM's `devices` is "PV(first extent),...".
    by_key = dict(zip(("pv0", "pv1"), devices, strict=True))
    rows = json.loads(_report("lvs", "lv_name,seg_start_pe,seg_size_pe,stripes,stripe_size,devices",
                              options, env, "--segments"))["report"][0]["seg"]  # fmt: skip
    segments: list[tuple[str, ...]] = []
    for name, lv in lvs.items():
        for s in _segments(lv):
            stripes = s["stripes"]
            assert isinstance(stripes, list)
            pairs = zip(stripes[::2], stripes[1::2], strict=True)
            devs = ",".join(f"{by_key[str(k)]}({at})" for k, at in pairs)
            size = _num(s.get("stripe_size", 0)) * 512
            numbers = (s["start_extent"], s["extent_count"], s["stripe_count"], size)
            segments.append((name, *map(str, numbers), devs))
    got = [(r["lv_name"], r["seg_start_pe"], r["seg_size_pe"], r["stripes"], r["stripe_size"], r["devices"])
           for r in rows]  # fmt: skip
    assert sorted(got) == sorted(segments)


def _sized(devices_mib: tuple[int, int]) -> VgPlan:
    """The fixture's VG planned onto PV partitions of these sizes by the project's sizing."""
    lvs = (LogicalVolume("lvroot", 8 * MIB), LogicalVolume("striped", 8 * MIB, "striped"))
    vg = VolumeGroup("vgcap", EXTENT, (("a", 1), ("b", 1)), lvs)
    disks = {}
    for name, mib in zip(("a", "b"), devices_mib, strict=True):
        part = PartitionPlan(1, "lvm-pv", "LVM2_member", "", 64 * MIB, 2048, mib * MIB // 512, 512, "scaled")
        source = SourceDisk(name, 128 * MIB, 512)
        disks[name] = DiskPlan(DiskAssignment(source, TargetDisk(name, mib * MIB, 512), "by size"), (part,))
    return size_vg(vg, disks)


@pytest.mark.root
@pytest.mark.parametrize(
    ("mib", "extents"),
    [((256, 192), {"lvroot": 7, "striped": 7}), ((40, 24), {"lvroot": 2, "striped": 2})],
    ids=["larger", "smaller"],
)
def test_real_vgcfgrestore_takes_the_planned_layout(
    tmp_path: Path, loops: Loops, mib: tuple[int, int], extents: dict[str, int]
) -> None:
    vg = _sized(mib)
    assert {lv.name: lv.new_extents for lv in vg.lvs} == extents
    devices = loops(*mib)
    tree, options, env = _restore(tmp_path, devices, vg)
    _check_against_lvm(tree, devices, options, env)
    sizes = {lv["name"]: lv["size_bytes"] for lv in lvm_summary(
        _report("vgs", "vg_name,vg_uuid,vg_extent_size,vg_size", options, env),
        _report("pvs", "pv_name,pv_uuid,pv_size,vg_name", options, env),
        _report("lvs", "lv_name,vg_name,lv_uuid,lv_size,segtype", options, env))[0]["lvs"]}  # fmt: skip
    # The plan's sizes; the striped one in whole stripes of its 2.
    assert sizes == {"lvroot": extents["lvroot"] * EXTENT, "striped": extents["striped"] // 2 * 2 * EXTENT}
    assert not list(tmp_path.glob("lvm/backup*")) and not list(tmp_path.glob("lvm/archive*"))


@pytest.mark.root
def test_real_vgcfgrestore_takes_a_linear_volume_across_pvs(tmp_path: Path, loops: Loops) -> None:
    devices = loops(40, 24)
    tree, options, env = _restore(tmp_path, devices, plan(lvroot=10, striped=4))
    assert len(_segments(_lvs(tree)["lvroot"])) == 2
    _check_against_lvm(tree, devices, options, env)
    # LVM's own backup of what it now holds: the same tree but for its bookkeeping.
    run(["lvm", "vgcfgbackup", *options, "-f", str(tmp_path / "back.txt"), "vgcap"], env=env)
    theirs = parse_metadata((tmp_path / "back.txt").read_text())
    assert _lvs(theirs) == _lvs(tree)

    def pvs(t: Section) -> list[Section]:
        """The PVs but their device hint."""
        found = _subs(_vg(t)["physical_volumes"]).values()
        return [{k: v for k, v in pv.items() if k != "device"} for pv in found]

    assert pvs(theirs) == pvs(tree)
    assert (_vg(tree)["seqno"], _vg(theirs)["seqno"]) == (1, 2)  # vgcfgrestore's write counts one


@pytest.mark.root
def test_real_pvcreate_refuses_the_saved_metadata_on_a_smaller_disk(tmp_path: Path, loops: Loops) -> None:
    """Why the metadata is rewritten first: the saved pe_count does not fit a smaller PV."""
    (small,) = loops(40)
    options, env = _lvm(tmp_path, [small])
    backup = tmp_path / "saved.txt"
    backup.write_text(RUN_VGCAP)
    proc = run(pvcreate_argv(small, RUN_PV0, str(backup), options), env=env, check=False)
    assert proc.returncode != 0 and b"end beyond end of device" in proc.stderr
    sizes = {RUN_PV0: 40 * MIB, RUN_PV1: 40 * MIB}
    backup.write_text(restore_metadata(RUN_VGCAP, plan(lvroot=2, striped=2), sizes))
    run(pvcreate_argv(small, RUN_PV0, str(backup), options), env=env)
    pv = json.loads(_report("pvs", "pv_uuid,pe_start,dev_size", options, env))["report"][0]["pv"][0]
    assert (pv["pv_uuid"], int(pv["pe_start"]), int(pv["dev_size"])) == (RUN_PV0, MIB, 40 * MIB)
