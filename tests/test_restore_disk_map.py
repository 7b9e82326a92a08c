"""The restore's disk mapping (boot/restore/disk_map.py): by identity when the hardware is the
same, else by size in the saved order; never the restore set's disk or the boot medium; the
refusals name the disk, its numbers and every target disk with why it was not used."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from initrd_composer.boot.restore import RestoreRefused
from initrd_composer.boot.restore.disk_map import map_disks
from initrd_composer.boot.restore.model import GIB, SourceDisk, TargetDisk


def src(name: str, gib: float, wwn: str = "", serial: str = "") -> SourceDisk:
    return SourceDisk(name, int(gib * GIB), 512, wwn=wwn, serial=serial, transport="virtio")


def tgt(name: str, gib: float, wwn: str = "", serial: str = "", *, holds_restore_set: bool = False,
        is_boot_medium: bool = False) -> TargetDisk:
    return TargetDisk(name, int(gib * GIB), 512, wwn=wwn, serial=serial, transport="sata",
                      holds_restore_set=holds_restore_set, is_boot_medium=is_boot_medium)


def pairs(sources: list[SourceDisk], targets: list[TargetDisk], excluded: list[str] | None = None,
          minimum_bytes: dict[str, int] | None = None) -> list[tuple[str, str, str]]:
    assigned = map_disks(sources, targets, excluded or (), minimum_bytes)
    return [(a.source.name, a.target.name, a.reason) for a in assigned]


def test_identity_mapping_survives_reordered_disk_names() -> None:
    """The same machine, the kernel naming its disks the other way round: WWN wins over names."""
    sources = [src("sda", 20, wwn="0x5000a"), src("sdb", 20, wwn="0x5000b")]
    targets = [tgt("sda", 20, wwn="0x5000b"), tgt("sdb", 20, wwn="0x5000a")]
    assert pairs(sources, targets) == [("sda", "sdb", "by WWN 0x5000a"), ("sdb", "sda", "by WWN 0x5000b")]


def test_serial_when_there_is_no_wwn() -> None:
    sources = [src("vda", 10, serial="S-ONE"), src("vdb", 10, serial="S-TWO")]
    targets = [tgt("vda", 10, serial="S-TWO"), tgt("vdb", 10, serial="S-ONE")]
    assert pairs(sources, targets) == [("vda", "vdb", "by serial S-ONE"), ("vdb", "vda", "by serial S-TWO")]


def test_by_size_smallest_target_that_holds_the_disk_in_saved_order() -> None:
    sources = [src("sda", 20), src("sdb", 100)]
    targets = [tgt("nvme1n1", 200), tgt("nvme0n1", 30), tgt("sdc", 120)]
    assert pairs(sources, targets) == [("sda", "nvme0n1", "by size"), ("sdb", "sdc", "by size")]


def test_by_size_ties_go_to_the_name_that_sorts_first() -> None:
    targets = [tgt("sdc", 30), tgt("sdb", 30)]
    assert pairs([src("sda", 20)], targets) == [("sda", "sdb", "by size")]


def test_identity_first_then_size_for_the_rest() -> None:
    sources = [src("sda", 20), src("sdb", 20, wwn="W1")]
    targets = [tgt("sda", 25), tgt("sdb", 20, wwn="W1")]
    assert pairs(sources, targets) == [("sda", "sda", "by size"), ("sdb", "sdb", "by WWN W1")]


def test_a_smaller_target_only_down_to_the_source_minimum_and_the_largest_such() -> None:
    sources = [src("sda", 100)]
    targets = [tgt("sdb", 40), tgt("sdc", 60)]
    assert pairs(sources, targets, minimum_bytes={"sda": 30 * GIB}) == [("sda", "sdc", "by size")]
    with pytest.raises(RestoreRefused):
        map_disks(sources, targets)  # no minimum given: the disk must not shrink


def test_never_the_restore_set_disk_even_when_it_is_the_only_fitting_one() -> None:
    targets = [tgt("sdb", 500, holds_restore_set=True), tgt("sdc", 10)]
    with pytest.raises(RestoreRefused) as refused:
        map_disks([src("sda", 20)], targets)
    assert "cannot place source disk sda" in refused.value.message
    assert "sdb would fit but holds the restore set and is never written" in refused.value.message
    assert "sdb (sata 500.0 GiB): holds the restore set" in refused.value.hint
    assert "sdc (sata 10.0 GiB): too small (needs at least 20.0 GiB)" in refused.value.hint


def test_never_the_boot_medium_nor_an_identity_match_on_it() -> None:
    """Even a WWN match: the saved machine's disk may now be the USB stick we booted from."""
    targets = [tgt("sdb", 20, wwn="W1", is_boot_medium=True)]
    with pytest.raises(RestoreRefused) as refused:
        map_disks([src("sda", 20, wwn="W1")], targets)
    assert "is the boot medium" in refused.value.message
    assert "sdb (sata 20.0 GiB): is the boot medium" in refused.value.hint


@pytest.mark.parametrize("key", ["sdb", "W9", "SER9"])
def test_excluded_by_name_or_identity(key: str) -> None:
    targets = [tgt("sdb", 50, wwn="W9", serial="SER9"), tgt("sdc", 40)]
    assert pairs([src("sda", 20)], targets, excluded=[key]) == [("sda", "sdc", "by size")]


def test_too_few_disks() -> None:
    with pytest.raises(RestoreRefused) as refused:
        map_disks([src("sda", 20), src("sdb", 20)], [tgt("nvme0n1", 100)])
    assert refused.value.message == (
        "cannot place source disk sdb: too few target disks (1 usable for 2 source disks)"
    )
    assert "nvme0n1 (sata 100.0 GiB): taken by source disk sda" in refused.value.hint


def test_too_small_disk_refused_with_the_numbers() -> None:
    with pytest.raises(RestoreRefused) as refused:
        map_disks([src("sda", 20)], [tgt("sdb", 16)])
    message = refused.value.message
    assert message.startswith("cannot place source disk sda: no remaining target disk holds its 20.0 GiB")
    assert str(20 * GIB) in message
    assert "sdb (sata 16.0 GiB): too small (needs at least 20.0 GiB)" in refused.value.hint


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 8), min_size=1, max_size=4),
    st.lists(st.integers(1, 8), min_size=1, max_size=6),
    st.randoms(use_true_random=False),
)
def test_deterministic_whatever_the_target_order(src_gib: list[int], tgt_gib: list[int],
                                                 rnd: random.Random) -> None:
    sources = [src(f"sd{chr(97 + i)}", g) for i, g in enumerate(src_gib)]
    targets = [tgt(f"vd{chr(97 + i)}", g) for i, g in enumerate(tgt_gib)]
    shuffled = targets[:]
    rnd.shuffle(shuffled)

    def outcome(ts: list[TargetDisk]) -> object:
        try:
            return pairs(sources, ts)
        except RestoreRefused as e:
            return str(e)

    first = outcome(targets)
    assert outcome(shuffled) == first
    if isinstance(first, list):
        assert len({t for _s, t, _r in first}) == len(sources)  # one source disk per target disk


def test_a_disk_chosen_at_the_console_comes_first_and_the_rest_map_as_usual() -> None:
    sources = [src("vda", 6, serial="S1"), src("vdb", 2)]
    targets = [tgt("sda", 8, serial="S1"), tgt("sdb", 10), tgt("sdc", 3)]
    assigned = map_disks(sources, targets, pinned={"vda": "sdb"})
    assert [(a.source.name, a.target.name, a.reason) for a in assigned] == [
        ("vda", "sdb", "chosen at the console"), ("vdb", "sdc", "by size"),
    ]


@pytest.mark.parametrize(
    ("choice", "says"),
    [("sdz", "source disk vda was sent to sdz, which this machine does not have"),
     ("sdb", "source disk vda was sent to sdb, which holds the restore set"),
     ("sdc", "source disk vda was sent to sdc (1.0 GiB), which cannot hold it: it needs at least 6.0 GiB")],
)  # fmt: skip
def test_a_console_choice_that_cannot_be_is_refused_naming_it(choice: str, says: str) -> None:
    targets = [tgt("sda", 8), tgt("sdb", 10, holds_restore_set=True), tgt("sdc", 1)]
    with pytest.raises(RestoreRefused) as refused:
        map_disks([src("vda", 6)], targets, pinned={"vda": choice})
    assert refused.value.message == says


def test_two_source_disks_sent_to_one_target_are_refused() -> None:
    with pytest.raises(RestoreRefused, match="vdb was sent to sda, which another source disk takes"):
        map_disks([src("vda", 2), src("vdb", 2)], [tgt("sda", 8), tgt("sdb", 8)],
                  pinned={"vda": "sda", "vdb": "sda"})  # fmt: skip
