"""/init's console output: machine lines reach every console= the boot menu gave."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from initrd_composer.boot import console


def test_mirrors_are_the_consoles_before_the_last() -> None:
    # console=tty0 console=ttyS0,115200n8 -> active "tty0 ttyS0", /dev/console is ttyS0
    assert console.mirror_consoles(["tty0", "ttyS0"]) == ["tty0"]
    assert console.mirror_consoles(["ttyS0"]) == []
    assert console.mirror_consoles([]) == []
    assert console.mirror_consoles(["ttyS0", "tty0", "ttyS0"]) == ["tty0"]


def test_emit_writes_the_line_to_every_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(console, "_mirrors", [])
    active = tmp_path / "active"
    active.write_text("tty0 ttyS0\n")
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "tty0").write_bytes(b"")
    assert console.open_mirrors(str(active), str(dev)) == ["tty0"]
    console.emit('hwreport: {"a": 1}')
    for fd in console._mirrors:
        os.close(fd)
    assert (dev / "tty0").read_bytes() == b'hwreport: {"a": 1}\r\n'
    assert capsys.readouterr().out == 'hwreport: {"a": 1}\n'


def test_no_sysfs_means_no_mirrors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "_mirrors", [])
    assert console.open_mirrors(str(tmp_path / "missing"), str(tmp_path)) == []
