"""`url=` in a real boot: the media stage reaches a server on the host's loopback (the guest
sees it as 10.0.2.2), reads the restore data through once in `probe` mode, and resumes with
the same bytes when the server drops the connection mid-file."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.http_test_server import Drop, Scenario, Served, serving
from tests.image_fixtures import BuiltImage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import qemu_boot

pytest_plugins = ("tests.image_fixtures",)
pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("network")]

DATA = random.Random(9).randbytes(3 * (1 << 20) + 777)
SHA = hashlib.sha256(DATA).hexdigest()


def _boot(image: BuiltImage, append: str) -> tuple[dict[str, Any], list[str]]:
    vmlinuz = Path(f"/boot/vmlinuz-{image.version}")
    devices = ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0"]
    append = f"console=ttyS0 probe ip=dhcp {append}"
    result = qemu_boot.boot(vmlinuz, image.path, append, devices, timeout=150)
    assert result.reason == "matched", "\n".join(result.lines[-40:])
    assert result.matched_line is not None
    report: dict[str, Any] = json.loads(result.matched_line.split(":", 1)[1])
    return report, list(result.lines)


def _guest_url(base: str, path: str) -> str:
    return base.replace("127.0.0.1", "10.0.2.2") + path


def test_a_dropped_connection_resumes_and_the_bytes_match(all_nics_image: BuiltImage) -> None:
    scenario = Scenario(files={"/restore.tar": Served(DATA)}, drops=[Drop(after=1_200_000, how="reset")])
    with serving(scenario) as base:
        report, lines = _boot(all_nics_image, f"url={_guest_url(base, '/restore.tar')}")
    media = report["media"]
    assert media["ok"], media
    assert (media["kind"], media["source"]) == ("http", _guest_url(base, "/restore.tar"))
    data = media["data"]
    assert (data["sha256"], data["bytes"], data["size"]) == (SHA, len(DATA), len(DATA))
    assert data["resumes"] == 1 and data["accept_ranges"], data
    ranges = scenario.ranges()
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=1"), ranges
    stage = next(line for line in lines if line.startswith("stage: media "))
    assert stage.startswith("stage: media ok http http://10.0.2.2:"), stage


def test_a_missing_file_is_reported_and_the_boot_goes_on(all_nics_image: BuiltImage) -> None:
    with serving(Scenario(files={})) as base:
        report, lines = _boot(all_nics_image, f"url={_guest_url(base, '/nothing.tar')}")
    media = report["media"]
    assert (media["ok"], media["kind"], media["reason"]) == (False, "http", "not-found"), media
    assert any(line.startswith("stage: media failed http ") for line in lines)


def _attempts(report: dict[str, Any]) -> list[tuple[str, bool, str | None]]:
    return [(a["kind"], a["ok"], a["reason"]) for a in report["media"]["attempts"]]


def test_nuke_retries_a_bounded_number_of_times_then_goes_on(all_nics_image: BuiltImage) -> None:
    """No one at the console: three attempts with back-off, then the report and the shell."""
    with serving(Scenario(files={})) as base:
        vmlinuz = Path(f"/boot/vmlinuz-{all_nics_image.version}")
        devices = ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0"]
        append = f"console=ttyS0 nuke ip=dhcp url={_guest_url(base, '/gone.tar')}"
        result = qemu_boot.boot(vmlinuz, all_nics_image.path, append, devices, timeout=150)
    assert result.reason == "matched" and result.matched_line is not None, "\n".join(result.lines[-30:])
    report = json.loads(result.matched_line.split(":", 1)[1])
    assert _attempts(report) == [("http", False, "not-found")] * 3
    gaps = [b["seconds"] for b in report["media"]["attempts"]]
    assert report["media"]["seconds"] >= sum(gaps) + 2.0 + 4.0 - 0.5, report["media"]  # the back-off


def test_the_console_offers_retry_shell_and_going_on(all_nics_image: BuiltImage) -> None:
    """interactive: the first failure is answered r (retry), the second s (a shell, left with
    exit), then c (go on without the data): the report shows two attempts."""
    with serving(Scenario(files={})) as base:
        vmlinuz = Path(f"/boot/vmlinuz-{all_nics_image.version}")
        devices = ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0"]
        append = f"console=ttyS0 interactive ip=dhcp url={_guest_url(base, '/gone.tar')}"
        replies = [
            qemu_boot.Reply("HTTP 404", "r\n"),
            qemu_boot.Reply("HTTP 404", "s\n"),
            qemu_boot.Reply("exit the shell to choose again", "echo shell-$((6*7))\nexit\n"),
            qemu_boot.Reply("shell-42", "c\n"),
        ]
        result = qemu_boot.boot(vmlinuz, all_nics_image.path, append, devices, timeout=150, replies=replies)
    assert result.reason == "matched" and result.matched_line is not None, "\n".join(result.lines[-30:])
    report = json.loads(result.matched_line.split(":", 1)[1])
    assert _attempts(report) == [("http", False, "not-found")] * 2, report["media"]
    assert any("[r]etry, [n]ext source (cdrom/usb by marker), [s]hell" in line for line in result.lines)
