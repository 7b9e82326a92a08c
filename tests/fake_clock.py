"""A clock tests drive by hand: `clock()` reads it, `clock.sleep(s)` advances it and records the
wait, and hooks run at each sleep stand for what happens meanwhile (a device appearing)."""

from __future__ import annotations

from collections.abc import Callable


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.slept: list[float] = []
        self.on_sleep: list[Callable[[int], object]] = []  # given how many sleeps so far

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        for hook in self.on_sleep:
            hook(len(self.slept))
