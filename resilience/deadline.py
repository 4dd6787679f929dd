"""One budget per request; every stage gets what is left of it, minus a reserve for the fallback."""
from __future__ import annotations

import time
from typing import Callable

Clock = Callable[[], float]


class DeadlineExceeded(TimeoutError):
    """The request's budget is spent (or too little is left to start the stage)."""


class Deadline:
    """A monotonic deadline. ``budget_s`` is in seconds; ``clock`` is injectable for tests."""

    def __init__(self, budget_s: float, *, clock: Clock = time.monotonic) -> None:
        self.budget_s = budget_s
        self._clock = self.clock = clock
        self.started = clock()
        self.expires_at = self.started + budget_s

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.expires_at - self._clock())

    def elapsed(self) -> float:
        return self._clock() - self.started

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def stage_timeout(self, stage_timeout_s: float, reserve_s: float = 0.0) -> float:
        """``min(stage_timeout_s, remaining − reserve_s)``; raises :class:`DeadlineExceeded` if ≤ 0."""
        left = self.remaining() - reserve_s
        if left <= 0:
            raise DeadlineExceeded(f"no budget left (remaining {self.remaining():.3f}s, reserve {reserve_s:.3f}s)")
        return min(stage_timeout_s, left)
