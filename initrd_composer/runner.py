"""The one subprocess helper: argv lists only, never a shell."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from initrd_composer.errors import ComposeError


def run(
    argv: Sequence[str | Path],
    *,
    input_bytes: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv, capture stdout/stderr; on failure raise ComposeError quoting the command."""
    args = [os.fspath(a) for a in argv]
    full_env = None if env is None else {**os.environ, **env}
    try:
        proc = subprocess.run(  # noqa: S603 - argv list, no shell
            args,
            input=input_bytes,
            capture_output=True,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ComposeError(
            f"cannot run {args[0]}: not found", f"install the package that provides {args[0]}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ComposeError(f"timed out after {timeout}s: {shlex.join(args)}") from exc
    if check and proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        last = detail[-1] if detail else f"exit status {proc.returncode}"
        raise ComposeError(f"command failed: {shlex.join(args)}: {last}")
    return proc
