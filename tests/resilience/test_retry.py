"""Retry: full-jitter backoff, the retry budget, Retry-After, and the deadline. Time is a FakeClock."""
from __future__ import annotations

import random

import pytest

from resilience import (BreakerConfig, Deadline, DependencyUnavailable, Guard, GuardConfig, RetryBudget,
                        RetryConfig, RetryPolicy, UpstreamError)
from tests.resilience.fakes import FakeClock, FakeSleep

NO_TRIP = BreakerConfig(failure_threshold=10_000, min_calls=10_000, window=10_000)


def make_guard(clock: FakeClock, *, retry: RetryConfig | None = None, breaker: BreakerConfig = NO_TRIP,
               rng: random.Random | None = None, **kw) -> tuple[Guard, FakeSleep]:
    sleep = FakeSleep(clock)
    config = GuardConfig(breaker=breaker, retry=retry or RetryConfig(), **kw)
    return Guard("llm", config, clock=clock, sleep=sleep, random=(rng or random.Random(7)).random), sleep


class Flaky:
    """Raises the given errors in order, then returns "ok"; counts attempts."""

    def __init__(self, *errors: BaseException, clock: FakeClock | None = None, takes_s: float = 0.0) -> None:
        self.errors = list(errors)
        self.attempts = 0
        self.clock, self.takes_s = clock, takes_s

    async def __call__(self):
        self.attempts += 1
        if self.clock is not None:
            self.clock.advance(self.takes_s)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_backoff_is_full_jitter_within_the_exponential_cap():
    policy = RetryPolicy(RetryConfig(base_s=0.1, max_backoff_s=1.0), random=random.Random(42).random)
    for retry_number, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        samples = [policy.backoff_s(retry_number) for _ in range(500)]
        assert all(0 <= s <= cap for s in samples)
        assert max(samples) > 0.9 * cap and min(samples) < 0.1 * cap  # spread over the whole range


async def test_retries_then_succeeds(clock):
    guard, sleep = make_guard(clock, retry=RetryConfig(max_attempts=3))
    op = Flaky(UpstreamError("503", status=503), TimeoutError())
    assert await guard.call(op, Deadline(10, clock=clock)) == "ok"
    assert op.attempts == 3
    assert len(sleep.delays) == 2
    assert guard.snapshot()["stats"]["retries"] == 2


async def test_retry_after_is_honoured(clock):
    guard, sleep = make_guard(clock, retry=RetryConfig(retry_after_cap_s=2.0))
    op = Flaky(UpstreamError("slow down", status=429, retry_after_s=1.5))
    assert await guard.call(op, Deadline(10, clock=clock)) == "ok"
    assert sleep.delays == [1.5]


async def test_retry_after_beyond_the_cap_fails_now_as_rate_limited(clock):
    # The stage and the deadline could both wait 30 s: only the cap (2 s) may refuse it. (With the
    # default 2 s stage the deadline rule refused it too, so ignoring the cap went unnoticed.)
    guard, sleep = make_guard(clock, retry=RetryConfig(retry_after_cap_s=2.0), timeout_s=120.0)
    op = Flaky(UpstreamError("slow down", status=503, retry_after_s=30))
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(op, Deadline(120, clock=clock))
    assert (err.value.reason.value, err.value.attempts, err.value.retry_after_s) == ("rate_limited", 1, 30)
    assert op.attempts == 1 and sleep.delays == []


async def test_retry_after_beyond_the_deadline_fails_now_as_rate_limited(clock):
    guard, sleep = make_guard(clock, retry=RetryConfig(retry_after_cap_s=2.0))
    op = Flaky(UpstreamError("slow down", status=429, retry_after_s=1.0))
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(op, Deadline(1.5, clock=clock), reserve_s=0.6)  # 0.9 s usable < 1.0 + min attempt
    assert err.value.reason.value == "rate_limited"
    assert op.attempts == 1 and sleep.delays == []


async def test_non_retryable_and_caller_faults_are_not_retried(clock):
    guard, sleep = make_guard(clock, retry=RetryConfig(max_attempts=5))
    for error in (UpstreamError("unsupported model", status=404, retryable=False),
                  UpstreamError("prompt too long", status=400, retryable=False, caller_fault=True),
                  ValueError("unparseable response")):
        op = Flaky(error)
        with pytest.raises(DependencyUnavailable) as err:
            await guard.call(op, Deadline(10, clock=clock))
        assert op.attempts == 1 and err.value.reason.value == "error"
    assert sleep.delays == []
    assert err.value.__cause__ is not None


async def test_no_retry_that_cannot_finish_inside_the_deadline(clock):
    # Backoff ≤ 0.05 s (base) and min_attempt_s 0.05: a retry needs ≤ 0.1 s left; only 0.05 s is.
    guard, sleep = make_guard(clock, retry=RetryConfig(max_attempts=5, base_s=0.05), min_attempt_s=0.05)
    op = Flaky(*[UpstreamError("503", status=503)] * 5, clock=clock, takes_s=0.95)
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(op, Deadline(1.0, clock=clock))
    assert op.attempts == 1
    assert err.value.detail.startswith("deadline")


async def test_no_first_attempt_without_budget_for_it(clock):
    guard, _ = make_guard(clock, min_attempt_s=0.05)
    op = Flaky()
    deadline = Deadline(1.0, clock=clock)
    clock.advance(0.97)
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(op, deadline)
    assert (err.value.reason.value, err.value.attempts, op.attempts) == ("timeout", 0, 0)


async def test_never_retries_once_the_breaker_opens(clock):
    guard, sleep = make_guard(clock, retry=RetryConfig(max_attempts=5),
                              breaker=BreakerConfig(failure_threshold=2, open_s=30))
    op = Flaky(*[UpstreamError("503", status=503)] * 5)
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(op, Deadline(10, clock=clock))
    assert op.attempts == 2, "the 2nd failure opened the breaker: no 3rd attempt"
    assert err.value.detail.startswith("breaker_open")
    assert err.value.retry_after_s == pytest.approx(30)


def simulate_outage(clock: FakeClock, budget: RetryBudget, *, rps: float, seconds: float,
                    max_attempts: int = 2) -> float:
    """100% upstream failure at ``rps`` requests/s; returns upstream attempts ÷ requests."""
    requests = attempts = 0
    for _ in range(int(rps * seconds)):
        clock.advance(1 / rps)
        requests += 1
        budget.record_call()
        attempts += 1
        for _ in range(max_attempts - 1):
            if not budget.try_acquire():
                break
            attempts += 1
    return attempts / requests


@pytest.mark.parametrize("rps", [10, 50, 200])
def test_retry_budget_keeps_attempts_per_request_at_most_1_2_over_30_s(clock, rps):
    # Defaults: 20% of calls over 10 s, floor 1 retry/s. Below 2 × floor / ratio = 10 requests/s
    # the floor dominates (≤ 1 + 1/rps): that is the price of letting a quiet service retry.
    c = RetryConfig()
    budget = RetryBudget(c.budget_ratio, c.budget_window_s, c.budget_min_per_s, clock=clock)
    assert simulate_outage(clock, budget, rps=rps, seconds=30, max_attempts=5) <= 1.2


def test_without_the_budget_the_same_outage_doubles_the_load(clock):
    budget = RetryBudget(1.0, 10, 1000, clock=clock)  # effectively unlimited
    assert simulate_outage(clock, budget, rps=50, seconds=30) == 2.0


def test_budget_floor_allows_retries_when_traffic_is_low(clock):
    budget = RetryBudget(0.2, 10, 1.0, clock=clock)
    budget.record_call()
    assert budget.try_acquire(), "1 call × 20% rounds to 0 retries, but the floor allows 10 per 10 s"
    assert sum(budget.try_acquire() for _ in range(20)) == 9
    clock.advance(9.5)
    assert not budget.try_acquire(), "still inside the 10 s window"
    clock.advance(1.5)
    assert budget.try_acquire(), "the window slid: retries are allowed again"


async def test_guard_with_defaults_keeps_attempts_per_request_at_most_1_2(clock):
    """The whole guard, default config, 100% failure at 20 requests/s for 30 s of fake time."""
    guard, _ = make_guard(clock, breaker=BreakerConfig())
    op = Flaky(*[UpstreamError("503", status=503)] * 10_000)
    requests = 0
    for _ in range(600):
        clock.advance(0.05)
        requests += 1
        with pytest.raises(DependencyUnavailable):
            await guard.call(op, Deadline(5, clock=clock))
    assert op.attempts / requests <= 1.2
    assert guard.breaker.snapshot()["totals"]["opened"] >= 1
