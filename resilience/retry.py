"""Retry policy: exponential backoff with full jitter, an Envoy-style retry budget, Retry-After.

The policy only *decides*; the guard runs the attempts. Every decision is explained by a
:class:`RetryDecision` so the guard can report why it stopped.
"""
from __future__ import annotations

import asyncio
import math
import random as _random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from resilience.config import RetryConfig
from resilience.errors import Reason, UpstreamError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


class RetryBudget:
    """Retries may be at most ``ratio`` × calls over the last ``window_s`` seconds, but
    ``min_per_s`` × ``window_s`` retries are always allowed (so a quiet service can still retry).

    Counts live in ``buckets`` time buckets (+1 for the current, partial one), so memory is
    constant whatever the request rate.
    With 100% upstream failure and at least ``min_per_s / ratio`` calls per second, upstream
    attempts ÷ calls ≤ 1 + ``ratio``.
    """

    def __init__(self, ratio: float, window_s: float, min_per_s: float, *, clock: Clock = time.monotonic,
                 buckets: int = 10) -> None:
        self.ratio = ratio
        self.window_s = window_s
        self.min_per_s = min_per_s
        self._clock = clock
        # One slot more than the window holds, so the counted span is never shorter than window_s
        # (a window that shrinks as its oldest bucket expires lets retries through early).
        self._n = buckets + 1
        self._width = window_s / buckets
        self._calls = [0] * self._n
        self._retries = [0] * self._n
        self._epoch = [-1] * self._n  # which bucket index (time // width) each slot holds
        self.denied = 0

    def _slot(self) -> int:
        index = int(self._clock() // self._width)
        slot = index % self._n
        if self._epoch[slot] != index:
            self._epoch[slot], self._calls[slot], self._retries[slot] = index, 0, 0
        return slot

    def _totals(self) -> tuple[int, int]:
        newest = int(self._clock() // self._width)
        calls = retries = 0
        for slot in range(self._n):
            if newest - self._n < self._epoch[slot] <= newest:
                calls += self._calls[slot]
                retries += self._retries[slot]
        return calls, retries

    def record_call(self, now: float | None = None) -> None:
        """Count one logical call (its first attempt); ``now``: a reading of this budget's clock, if the
        caller has one. (``_slot`` inlined: this runs on every guarded call.)"""
        index = int((self._clock() if now is None else now) // self._width)
        slot = index % self._n
        if self._epoch[slot] != index:
            self._epoch[slot], self._calls[slot], self._retries[slot] = index, 0, 0
        self._calls[slot] += 1

    def allowed(self) -> int:
        """Retries allowed in the current window (including those already spent)."""
        calls, _ = self._totals()
        return max(math.floor(self.ratio * calls), math.floor(self.min_per_s * self.window_s))

    def try_acquire(self) -> bool:
        """Spend one retry if the budget allows it."""
        slot = self._slot()
        _, retries = self._totals()
        if retries + 1 > self.allowed():
            self.denied += 1
            return False
        self._retries[slot] += 1
        return True

    def snapshot(self) -> dict[str, Any]:
        calls, retries = self._totals()
        return {"window_s": self.window_s, "calls": calls, "retries": retries, "allowed": self.allowed(),
                "denied": self.denied}


@dataclass(frozen=True)
class RetryDecision:
    """``retry``: whether to start another attempt after ``delay_s`` seconds.

    When ``retry`` is False, ``why`` says which rule stopped it (``not_retryable``,
    ``max_attempts``, ``breaker_open``, ``deadline``, ``budget``, ``retry_after_too_long``) and
    ``reason`` overrides the failure's reason if set (a too-long Retry-After → ``rate_limited``).
    """

    retry: bool
    delay_s: float = 0.0
    why: str = ""
    reason: Reason | None = None


def is_retryable(exc: BaseException) -> bool:
    """Timeouts and connection errors are; an :class:`UpstreamError` says for itself; others are not
    (an unexpected exception is a bug or a protocol mismatch that another attempt won't fix)."""
    if isinstance(exc, UpstreamError):
        return exc.retryable and not exc.caller_fault
    return isinstance(exc, (TimeoutError, ConnectionError))


class RetryPolicy:
    """Decides whether and when to retry. ``random`` returns floats in [0, 1) (``random.random``
    of a seeded :class:`random.Random` in tests); ``sleep`` is awaited between attempts."""

    def __init__(self, config: RetryConfig | None = None, *, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep, random: Callable[[], float] = _random.random,
                 budget: RetryBudget | None = None) -> None:
        self.config = config or RetryConfig()
        self.sleep = sleep
        self._random = random
        self.budget = budget or RetryBudget(self.config.budget_ratio, self.config.budget_window_s,
                                            self.config.budget_min_per_s, clock=clock)

    def backoff_s(self, retry_number: int) -> float:
        """Full jitter: uniform in [0, min(max_backoff_s, base_s × 2^(retry_number − 1))] seconds,
        ``retry_number`` counting from 1 for the first retry."""
        cap = min(self.config.max_backoff_s, self.config.base_s * (2 ** max(0, retry_number - 1)))
        return self._random() * cap

    def decide(self, attempts: int, exc: BaseException, *, remaining_s: float, min_attempt_s: float,
               breaker_admits: bool = True) -> RetryDecision:
        """Whether to retry after ``attempts`` attempts ended with ``exc``.

        ``remaining_s`` is what is left of the deadline for this stage (after the fallback reserve);
        a retry is refused unless ``delay + min_attempt_s`` fits in it. The budget is only spent
        when every other rule allows the retry.
        """
        retry_after = exc.retry_after_s if isinstance(exc, UpstreamError) else None
        if not is_retryable(exc):
            return RetryDecision(False, why="not_retryable")
        if retry_after is not None and retry_after > self.config.retry_after_cap_s:
            return RetryDecision(False, why="retry_after_too_long", reason=Reason.RATE_LIMITED)
        if attempts >= self.config.max_attempts:
            return RetryDecision(False, why="max_attempts")
        if not breaker_admits:
            return RetryDecision(False, why="breaker_open")
        delay = retry_after if retry_after is not None else self.backoff_s(attempts)
        if delay + min_attempt_s > remaining_s:
            if retry_after is not None:
                return RetryDecision(False, why="retry_after_too_long", reason=Reason.RATE_LIMITED)
            return RetryDecision(False, why="deadline")
        if not self.budget.try_acquire():
            return RetryDecision(False, why="budget")
        return RetryDecision(True, delay_s=delay)
