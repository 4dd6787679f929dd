"""Test doubles for time and telemetry: a clock tests move by hand and an observer that records."""
from __future__ import annotations

import asyncio


class FakeClock:
    """Monotonic seconds that only move when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSleep:
    """An ``asyncio.sleep`` stand-in that records delays and moves a :class:`FakeClock` instead."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)


class RecordingObserver:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_attempt(self, dependency: str, outcome: str, seconds: float) -> None:
        self.events.append(("attempt", dependency, outcome))

    def on_retry(self, dependency: str, reason: str) -> None:
        self.events.append(("retry", dependency, reason))

    def on_shed(self, dependency: str) -> None:
        self.events.append(("shed", dependency))

    def on_short_circuit(self, dependency: str) -> None:
        self.events.append(("short_circuit", dependency))

    def on_state_change(self, dependency: str, old: str, new: str) -> None:
        self.events.append(("state", dependency, old, new))

    def of(self, kind: str) -> list[tuple]:
        return [e for e in self.events if e[0] == kind]
