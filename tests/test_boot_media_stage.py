"""The media stage's plan and retry policy, with finders that fail or succeed on cue (pure:
no devices; the real sources have their own boot tests)."""

from __future__ import annotations

from typing import Any

import pytest

from initrd_composer.boot.cmdline import parse_cmdline
from initrd_composer.boot.media.plan import NUKE_ATTEMPTS, media_wanted, plan_media, timeout_of
from initrd_composer.boot.media.stage import describe, run_media, stage_detail
from initrd_composer.boot.sources import Choice, Found, MediaContext, SourceError
from tests.fake_clock import FakeClock


class Finders:
    """Per kind, a list of outcomes: an exception to raise or a Found to return (last repeats)."""

    def __init__(self, **outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.calls: list[str] = []

    def finder(self, kind: str) -> Any:
        def find(ctx: MediaContext, choice: Choice) -> Found:
            self.calls.append(kind)
            queue = self.outcomes[kind]
            outcome = queue.pop(0) if len(queue) > 1 else queue[0]
            if isinstance(outcome, BaseException):
                raise outcome
            assert isinstance(outcome, Found)
            return outcome

        return find

    def table(self) -> dict[str, Any]:
        return {kind: self.finder(kind) for kind in self.outcomes}


def _ctx(cmdline: str, clock: FakeClock) -> MediaContext:
    return MediaContext(cfg=parse_cmdline(cmdline), log=lambda _: None, sleep=clock.sleep, clock=clock)


NFS_OK = Found("nfs", "10.0.2.2:/rescue", "/run/initrd-composer/media/nfs", {"version": "4.2"})
DISC = Found("cdrom", "/dev/sr0", "/run/initrd-composer/media/cdrom0", {"volume_id": "RESCUE"})
DOWN = SourceError("10.0.2.2:/rescue: server unreachable", "is the NFS server up?", reason="unreachable")


def test_plan_keeps_mondorescue_order_and_offers_removable_media() -> None:
    cfg = parse_cmdline("nuke url=http://h/x nfsmount=s:/a netfsmount=s:/a tapedev=/dev/nst0")
    plan = plan_media(cfg)
    assert [(c.kind, c.spec) for c in plan.choices] == [
        ("tape", "/dev/nst0"), ("nfs", "s:/a"), ("http", "http://h/x")
    ]  # fmt: skip
    assert [c.kind for c in plan.alternatives] == ["removable"]
    bare = plan_media(parse_cmdline("nuke"))
    assert [c.kind for c in bare.choices] == ["removable"] and bare.alternatives == ()


def test_plan_names_words_that_cannot_apply() -> None:
    plan = plan_media(parse_cmdline("pxe prefix=rescue interactive"))
    assert any("pxe without nfsmount=" in p for p in plan.problems)
    assert any("prefix=rescue" in p for p in plan.problems)


@pytest.mark.parametrize(
    ("cmdline", "wanted"),
    [("probe", False), ("probe ip=dhcp", False), ("probe nfsmount=s:/a", True), ("probe iso_mode", True),
     ("probe obdr", True), ("nuke", True), ("expert", True), ("", False)],
)  # fmt: skip
def test_media_runs_for_restore_modes_and_asked_probes(cmdline: str, wanted: bool) -> None:
    assert media_wanted(parse_cmdline(cmdline)) is wanted


def test_media_timeout_word() -> None:
    assert timeout_of(parse_cmdline("media_timeout=5")) == 5.0
    assert timeout_of(parse_cmdline("")) == 30.0
    cfg = parse_cmdline("media_timeout=0 media_timeout=x")
    assert cfg.media_timeout is None and len(cfg.problems) == 2


def test_nfs_spec_forms() -> None:
    assert parse_cmdline("nfsmount=[fd00::1]:/srv/r").nfsmount == "[fd00::1]:/srv/r"
    assert parse_cmdline("nfsmount=host.example:/srv").nfsmount == "host.example:/srv"
    for bad in ("nfsmount=[fd00::1/srv", "nfsmount=host:srv", "nfsmount=:/srv", "nfsmount=a/b:/srv"):
        assert parse_cmdline(bad).nfsmount is None, bad
    assert parse_cmdline("url=ftp://h/x").url is None  # no FTP client on the boot side


def test_found_on_the_first_try_fills_the_section() -> None:
    clock = FakeClock()
    finders = Finders(nfs=[NFS_OK])
    section, found = run_media(plan_media(parse_cmdline("nuke nfsmount=10.0.2.2:/rescue")), _ctx("", clock),
                               mode="nuke", finders=finders.table())  # fmt: skip
    assert found is NFS_OK
    assert {k: section[k] for k in ("ok", "kind", "source", "path", "error")} == {
        "ok": True, "kind": "nfs", "source": "10.0.2.2:/rescue", "path": NFS_OK.path, "error": None
    }  # fmt: skip
    assert section["data"] == {"version": "4.2"} and len(section["attempts"]) == 1
    assert stage_detail(section) == f"nfs 10.0.2.2:/rescue at {NFS_OK.path}"


def test_nuke_retries_a_bounded_number_of_times_with_backoff_and_never_asks() -> None:
    clock = FakeClock()
    finders = Finders(nfs=[DOWN], removable=[DISC])

    def ask(question: str, timeout: float) -> str:
        raise AssertionError("nuke must not ask")

    plan = plan_media(parse_cmdline("nuke nfsmount=10.0.2.2:/rescue"))
    section, found = run_media(plan, _ctx("", clock), mode="nuke", ask=ask, finders=finders.table())
    assert found is None and finders.calls == ["nfs"] * NUKE_ATTEMPTS  # the disc is only offered
    assert clock.slept == [2.0, 4.0]
    want = (False, "unreachable", "is the NFS server up?")
    assert (section["ok"], section["reason"], section["hint"]) == want
    assert stage_detail(section) == "nfs 10.0.2.2:/rescue: 10.0.2.2:/rescue: server unreachable"


def test_nuke_goes_on_to_the_next_named_source() -> None:
    clock = FakeClock()
    finders = Finders(nfs=[DOWN], http=[Found("http", "http://h/x", "http://h/x (stream)")])
    plan = plan_media(parse_cmdline("nuke nfsmount=10.0.2.2:/rescue url=http://h/x"))
    section, found = run_media(plan, _ctx("", clock), mode="nuke", finders=finders.table())
    assert found is not None and found.kind == "http"
    assert finders.calls == ["nfs"] * NUKE_ATTEMPTS + ["http"]
    assert [a["ok"] for a in section["attempts"]] == [False] * NUKE_ATTEMPTS + [True]


def test_probe_tries_each_source_once() -> None:
    clock = FakeClock()
    finders = Finders(nfs=[DOWN])
    section, found = run_media(plan_media(parse_cmdline("probe nfsmount=10.0.2.2:/rescue")), _ctx("", clock),
                               mode="probe", finders=finders.table())  # fmt: skip
    assert found is None and finders.calls == ["nfs"] and clock.slept == []
    assert section["kind"] == "nfs" and section["source"] == "10.0.2.2:/rescue"


def test_interactive_retry_then_another_source() -> None:
    clock = FakeClock()
    finders = Finders(nfs=[DOWN], removable=[DISC])
    answers = iter(["r\n", "n\n"])
    questions: list[str] = []

    def ask(question: str, timeout: float) -> str:
        questions.append(question)
        return next(answers)

    plan = plan_media(parse_cmdline("interactive nfsmount=10.0.2.2:/rescue"))
    section, found = run_media(plan, _ctx("", clock), mode="interactive", ask=ask, finders=finders.table())
    assert found is DISC and finders.calls == ["nfs", "nfs", "removable"]
    assert "[n]ext source (cdrom/usb by marker)" in questions[0]
    assert section["kind"] == "cdrom" and section["ok"]


def test_interactive_shell_then_continue_without_data() -> None:
    clock = FakeClock()
    finders = Finders(nfs=[DOWN])
    answers = iter(["s\n", "c\n"])
    shells: list[str] = []
    plan = plan_media(parse_cmdline("compare nfsmount=10.0.2.2:/rescue"))
    section, found = run_media(plan, _ctx("", clock), mode="compare", ask=lambda q, t: next(answers),
                               shell=shells.append, finders=finders.table())  # fmt: skip
    assert found is None and len(shells) == 1 and finders.calls == ["nfs"]
    assert not section["ok"]


def test_unanswered_questions_time_out_to_bounded_retries() -> None:
    """Nobody at the console: each question times out; the stage ends after NUKE_ATTEMPTS."""
    clock = FakeClock()
    finders = Finders(nfs=[DOWN])
    plan = plan_media(parse_cmdline("interactive nfsmount=10.0.2.2:/rescue"))
    section, found = run_media(plan, _ctx("", clock), mode="interactive", ask=lambda q, t: None,
                               finders=finders.table())  # fmt: skip
    assert found is None and finders.calls == ["nfs"] * NUKE_ATTEMPTS and not section["ok"]


def test_a_finder_oserror_is_a_failed_attempt_not_a_crash() -> None:
    clock = FakeClock()
    finders = Finders(removable=[OSError(5, "Input/output error")])
    section, found = run_media(plan_media(parse_cmdline("expert")), _ctx("", clock), mode="expert",
                               finders=finders.table())  # fmt: skip
    assert found is None and "Input/output error" in section["error"]


def test_urls_are_described_without_passwords() -> None:
    assert describe(Choice("http", "https://u:secret@h/x")) == "http https://u:***@h/x"
