"""The source machine the restore tests capture is real: a Debian 12 disk built in a guest,
booted from SeaBIOS through its own GRUB, initramfs and LVM root to systemd's marker unit."""

from __future__ import annotations

import pytest

from tests.source_machine import AWKWARD_NAMES, MARKER, SourceMachine, boot_to_marker

pytest_plugins = ("tests.image_fixtures", "tests.restore_fixtures")
# Not with the NFS tests: their module-scoped server would block these in the same worker;
# across workers the port lock makes the two take turns (see restore_fixtures.PORT_WAIT_S).
# The first test to ask for the source machine builds it (mmdebstrap and an install boot, in
# TCG): up to a quarter of an hour on CI's two busy cores.
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("source-machine"), pytest.mark.timeout(2400)]


def test_the_source_machine_boots_to_its_marker(source: SourceMachine) -> None:
    result = boot_to_marker(source.disk)
    assert result.reason == "matched", "\n".join(result.lines[-60:])
    lines = list(result.lines)
    assert any("Linux version " + source.kernel_version in line for line in lines), lines[:5]
    # printed by the source's own systemd unit, reading the awkward files it was given
    marker = next(line for line in lines if MARKER in line)
    marker = marker[marker.index(MARKER):]
    assert marker.split() == [MARKER, f"files={len(AWKWARD_NAMES)}", "colour=blue",
                              "/srv/awkward/capped", "cap_net_raw=ep", "swap=/dev/vda3"], marker  # fmt: skip
