"""Run the media plan: each source's finder, bounded retries, the `media` report section.

What happens when a source fails depends on who may be watching:
- `probe` and `expert`: each source once (a finder waits only up to its timeout); the report
  or the shell follows;
- `nuke`: each named source up to NUKE_ATTEMPTS times with back-off, then the next, then the
  caller's shell: no questions;
- `interactive`, `compare`: the console offers retry, another source, the shell, or going on
  without the data; an unanswered question times out to retry (bounded), so nothing waits
  forever on an unattended machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from initrd_composer.boot.media.plan import NUKE_ATTEMPTS, MediaPlan
from initrd_composer.boot.sources import Choice, Found, MediaContext, SourceError

Finder = Callable[[MediaContext, Choice], Found]
# (question, timeout seconds) -> the answer, or None when nobody answered in time
Ask = Callable[[str, float], "str | None"]
PROMPT_TIMEOUT_S = 60.0
BACKOFF_S = (2.0, 4.0, 8.0)


def finder_for(kind: str) -> Finder:
    """The finder of one source kind, imported when first needed (start-up stays small)."""
    if kind == "http":
        from initrd_composer.boot.sources import http_source  # noqa: PLC0415

        return http_source.find
    if kind == "nfs":
        from initrd_composer.boot.sources import nfs  # noqa: PLC0415

        return nfs.find
    if kind == "removable":
        from initrd_composer.boot.sources import removable  # noqa: PLC0415

        return removable.find
    if kind == "tape":
        from initrd_composer.boot.sources import tape_source  # noqa: PLC0415

        return tape_source.find
    raise ValueError(f"no finder for source kind {kind!r}")


def source_of(choice: Choice) -> str:
    """What the report's `source` says for a choice not found (URLs without their password)."""
    if choice.kind == "http":
        from initrd_composer.boot.sources.http_wire import redact  # noqa: PLC0415

        return redact(choice.spec)
    if choice.kind == "removable":
        return "by marker"
    return choice.spec or "any"


def describe(choice: Choice) -> str:
    """A choice as the console names it."""
    if choice.kind == "removable":
        return "cdrom/usb by marker"
    return f"{choice.kind} {source_of(choice)}"


@dataclass
class _Run:
    attempts: list[dict[str, Any]] = field(default_factory=list)
    last_error: SourceError | None = None
    last_choice: Choice | None = None


def _try(choice: Choice, ctx: MediaContext, finders: Mapping[str, Finder] | None, run: _Run) -> Found | None:
    started = ctx.clock()
    finder = (finders or {}).get(choice.kind) or finder_for(choice.kind)
    ctx.log(f"media: looking for the restore data: {describe(choice)}")
    try:
        found = finder(ctx, choice)
    except SourceError as exc:
        error = exc
    except OSError as exc:  # a finder bug or a device gone mid-way: a failed attempt, not a crash
        error = SourceError(f"{describe(choice)}: {exc}", reason="error")
    else:
        run.attempts.append({"kind": found.kind, "source": found.source, "ok": True, "error": None,
                             "reason": None, "seconds": round(ctx.clock() - started, 3)})  # fmt: skip
        return found
    run.last_error, run.last_choice = error, choice
    run.attempts.append({"kind": choice.kind, "source": source_of(choice), "ok": False,
                         "error": error.message, "reason": error.reason,
                         "seconds": round(ctx.clock() - started, 3)})  # fmt: skip
    ctx.log(f"media: {error.message}" + (f" ({error.hint})" if error.hint else ""))
    return None


def _question(error: SourceError, others: list[Choice]) -> str:
    nxt = f", [n]ext source ({describe(others[0])})" if others else ""
    return (f"media: {error.message}. [r]etry{nxt}, [s]hell, or [c]ontinue without the restore data? ")


def run_media(
    plan: MediaPlan,
    ctx: MediaContext,
    *,
    mode: str,
    ask: Ask | None = None,
    shell: Callable[[str], None] | None = None,
    finders: Mapping[str, Finder] | None = None,
    prompt_timeout_s: float = PROMPT_TIMEOUT_S,
) -> tuple[dict[str, Any], Found | None]:
    """Try the plan; returns the `media` section and what was found (None: nothing)."""
    started = ctx.clock()
    run = _Run()
    queue = list(plan.choices)
    found: Found | None = None
    prompting = mode in ("interactive", "compare") and ask is not None
    retries = NUKE_ATTEMPTS if mode == "nuke" else 1
    offered = list(plan.alternatives)
    while queue and found is None:
        choice = queue.pop(0)
        tries = 0
        while found is None:
            tries += 1
            found = _try(choice, ctx, finders, run)
            if found is not None:
                break
            if not prompting:
                if tries >= retries:
                    break
                ctx.sleep(BACKOFF_S[min(tries - 1, len(BACKOFF_S) - 1)])
                continue
            others = queue + [c for c in offered if c not in queue and c != choice]
            action = _decide(run.last_error, others, ask, shell=shell, timeout_s=prompt_timeout_s,
                             tries=tries)
            if action == "retry":
                continue
            if action == "next" and others:
                nxt = others[0]
                if nxt in offered:
                    offered.remove(nxt)
                queue = [nxt] + [c for c in queue if c != nxt]
            elif action == "stop":
                queue = []
            break
    return _section(found, run, plan, round(ctx.clock() - started, 3)), found


def _decide(error: SourceError | None, others: list[Choice], ask: Ask | None, *,
            shell: Callable[[str], None] | None, timeout_s: float, tries: int) -> str:
    """retry | next | stop, from the console; an unanswered question retries up to
    NUKE_ATTEMPTS times, then stops."""
    assert error is not None and ask is not None
    while True:
        answer = ask(_question(error, others), timeout_s)
        if answer is None:
            return "retry" if tries < NUKE_ATTEMPTS else "stop"
        word = answer.strip().lower()[:1]
        if word == "r":
            return "retry"
        if word == "n" and others:
            return "next"
        if word == "c":
            return "stop"
        if word == "s" and shell is not None:
            shell("media stage: fix what is wrong, exit the shell to choose again")


def _section(found: Found | None, run: _Run, plan: MediaPlan, seconds: float) -> dict[str, Any]:
    if found is not None:
        return {"ok": True, "kind": found.kind, "source": found.source, "path": found.path, "error": None,
                "reason": None, "hint": None, "seconds": seconds, "data": found.data,
                "attempts": run.attempts, "problems": list(plan.problems)}  # fmt: skip
    error, choice = run.last_error, run.last_choice
    return {
        "ok": False,
        "kind": choice.kind if choice else None,
        "source": source_of(choice) if choice else None,
        "path": None,
        "error": error.message if error else "no source was tried",
        "reason": error.reason if error else "nothing-tried",
        "hint": error.hint if error and error.hint else None,
        "seconds": seconds,
        "data": error.data if error else {},
        "attempts": run.attempts,
        "problems": list(plan.problems),
    }


def stage_detail(section: dict[str, Any]) -> str:
    """What follows `stage: media ok|failed`."""
    if section["ok"]:
        return f"{section['kind']} {section['source']} at {section['path']}"
    return f"{section['kind']} {section['source']}: {section['error']}"


def wait_answer(question: str, timeout_s: float) -> str | None:
    """The console's answer to a question (stdin), or None after `timeout_s` or at EOF."""
    import select  # noqa: PLC0415
    import sys  # noqa: PLC0415

    try:
        sys.stdout.write(question)
        sys.stdout.flush()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sys.stdin], [], [], left)
            if ready:
                line = sys.stdin.readline()
                return line if line else None
        sys.stdout.write("\n")
    except (OSError, ValueError):
        pass
    return None
