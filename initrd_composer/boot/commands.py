"""The boot side's one way to run a program: argv lists, never a shell, always bounded.

The host side has initrd_composer.runner; the boot side may not import it (the image
carries only initrd_composer.boot), and PID 1 wants different failure handling: a
command that fails or hangs is a result to report, never an exception that ends a stage
without saying which command it was.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

BUSYBOX = "/bin/busybox"


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int  # -1: could not start or timed out
    output: str  # stdout and stderr together, as a user would have seen them (stdout alone
    # with split_stderr, for output a parser reads)
    errors: str = ""  # stderr, with split_stderr

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """One line for the log: the command, and why it failed."""
        said = (self.errors.strip() or self.output.strip()).splitlines()
        tail = said[-1:] or [f"exit status {self.returncode}"]
        return f"{shlex.join(self.argv)}: {tail[0]}"


def run_command(
    argv: Sequence[str], *, timeout_s: float = 30.0, env: Mapping[str, str] | None = None,
    split_stderr: bool = False, input_text: str | None = None,
) -> CommandResult:
    args = tuple(argv)
    try:
        proc = subprocess.run(  # noqa: S603 - argv list, no shell
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
            stdin=subprocess.DEVNULL if input_text is None else None,
            input=None if input_text is None else input_text.encode(),
            timeout=timeout_s, check=False, env=None if env is None else dict(env),
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else ""
        return CommandResult(args, -1, partial + f"\ntimed out after {timeout_s:g} s")
    except OSError as exc:
        return CommandResult(args, -1, f"cannot run: {exc.strerror or exc}")
    errors = proc.stderr.decode(errors="replace") if split_stderr else ""
    return CommandResult(args, proc.returncode, proc.stdout.decode(errors="replace"), errors)


# What the restore steps take in place of run_command, so tests can record the commands.
Runner = Callable[..., CommandResult]
