"""The README's first command, run as a new user would: a fresh copy of the repository, a
new login shell (whatever python3 its PATH finds first: pyenv's here), `bash scripts/demo`.

The copy holds exactly what a clone of this tree would (tracked and not-ignored files, no
.venv, no out/), so a step that only works thanks to this checkout's state fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _fresh_copy(dest: Path) -> Path:
    listed = subprocess.run(  # noqa: S603 - fixed argv, test only
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if not src.is_file() and not src.is_symlink():
            continue  # deleted in the work tree, still in the index
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    assert not (dest / ".venv").exists() and not (dest / "out").exists()
    return dest


def _login_shell(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`bash -l` with only what a new login has: no PATH, no venv, no CI variables."""
    env = {"HOME": os.environ.get("HOME", "/root"), "TERM": "dumb", "LANG": "C.UTF-8"}
    return subprocess.run(  # noqa: S603 - fixed argv, test only
        ["bash", "-lc", command], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


@pytest.mark.qemu
@pytest.mark.root
def test_demo_from_a_fresh_clone_in_a_new_login_shell(tmp_path: Path) -> None:
    clone = _fresh_copy(tmp_path / "clone")
    probe = _login_shell("command -v python3", 30)
    assert probe.returncode == 0, probe.stderr

    run = _login_shell(f"cd {clone} && bash scripts/demo", 900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert f"setup: ready (python: {clone}/.venv/bin/python" in out
    assert re.search(r"^compose-initrd took [\d.]+ s$", out, re.M), run.stdout[-3000:]
    assert re.search(r"^qemu_boot: matched after [\d.]+s", out, re.M), run.stdout[-3000:]
    # the summary of the guest's hwreport line: the demo's e1000 and AHCI disk were driven
    assert re.search(r"^  devices: [1-9]\d*$", out, re.M), run.stdout[-3000:]
    assert re.search(r"^  netdev \S+ mac=52:54:00:12:34:56 driver=e1000$", out, re.M), run.stdout[-3000:]
    assert re.search(r"^  blockdev sd[a-z] type=disk driver=sd size=67108864$", out, re.M), run.stdout[-3000:]
    assert (clone / "out" / "initrd.img").stat().st_size > 0

    # Idempotent: a second set-up finds everything in place and changes nothing.
    again = _login_shell(f"cd {clone} && bash scripts/setup", 120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1].startswith("setup: ready"), again.stdout
    assert not re.search(r"installing|creating|pip install|unpacking", again.stdout), again.stdout

    # A new login shell finds the command (the link set-up left in /usr/local/bin).
    found = _login_shell("compose-initrd --version", 60)
    assert found.returncode == 0, found.stdout + found.stderr
    assert re.fullmatch(r"compose-initrd \d+\.\d+\.\d+\n", found.stdout)
