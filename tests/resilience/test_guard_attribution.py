"""What counts against a breaker: only what the dependency did within the stage's own limit.

A timeout caused by the caller's short budget, or by time queued behind our own bulkhead or scheduler,
is reported (the call still fails with ``timeout``) but never held against the dependency.
"""
from __future__ import annotations

import asyncio

import pytest

from resilience import BreakerConfig, BulkheadConfig, Deadline, DependencyUnavailable, Guard, GuardConfig, RetryConfig
from resilience.bulkhead import BulkheadFull
from resilience.guard import note_queued
from tests.resilience.fakes import RecordingObserver

ONE_TRY = RetryConfig(max_attempts=1)


async def hang_forever():
    await asyncio.Event().wait()


async def test_timeouts_cut_short_by_the_callers_budget_never_open_the_breaker():
    # The stage's own limit is 1 s; each caller allows 0.1 s (a short X-Request-Timeout).
    observer = RecordingObserver()
    guard = Guard("llm", GuardConfig(timeout_s=1.0, retry=ONE_TRY, breaker=BreakerConfig(failure_threshold=2)),
                  observer=observer)
    for _ in range(5):
        with pytest.raises(DependencyUnavailable) as err:
            await guard.call(hang_forever, Deadline(0.1))
        assert err.value.reason.value == "timeout"
    assert guard.breaker.state == "closed"
    assert guard.breaker.snapshot()["totals"]["failures"] == 0
    assert {e[2] for e in observer.of("attempt")} == {"caller_timeout"}


async def test_timeouts_within_the_stages_own_limit_still_open_it():
    guard = Guard("llm", GuardConfig(timeout_s=0.1, retry=ONE_TRY, breaker=BreakerConfig(failure_threshold=2)))
    for _ in range(2):
        with pytest.raises(DependencyUnavailable):
            await guard.call(hang_forever, Deadline(5))
    assert guard.breaker.state == "open"


async def test_waiting_in_our_own_bulkhead_is_not_the_dependencys_timeout():
    # One slot: the holder times out after the whole stage (counts once); the caller queued behind it
    # for most of its stage and then timed out with only a sliver left (must not count).
    # Margins of 0.1 s (the caller gives up queueing 0.1 s after the holder's stage ends; it then has 0.15 s
    # left): a 30 ms margin failed under a load average of 7 (the holder's timeout fired late, the caller shed).
    observer = RecordingObserver()
    guard = Guard("embedder", GuardConfig(timeout_s=0.9, retry=ONE_TRY, min_attempt_s=0.01,
                                          bulkhead=BulkheadConfig(max_concurrent=1, max_wait_s=0.85),
                                          breaker=BreakerConfig(failure_threshold=2)), observer=observer)
    holder = asyncio.create_task(guard.call(hang_forever, Deadline(5)))
    await asyncio.sleep(0.15)
    with pytest.raises(DependencyUnavailable):
        await guard.call(hang_forever, Deadline(5))
    with pytest.raises(DependencyUnavailable):
        await holder
    assert guard.breaker.snapshot()["totals"]["failures"] == 1
    assert guard.breaker.state == "closed"
    assert sorted(e[2] for e in observer.of("attempt")) == ["queued_timeout", "timeout"]


async def test_time_reported_as_queued_is_neither_a_timeout_nor_a_slow_call():
    guard = Guard("embedder", GuardConfig(timeout_s=0.2, retry=ONE_TRY,
                                          breaker=BreakerConfig(failure_threshold=1, slow_call_s=0.1,
                                                                slow_call_rate=0.1, min_calls=1, window=1)))

    async def queued_then(seconds_after: float | None):
        await asyncio.sleep(0.15)  # waiting for our own scheduler's turn
        note_queued(0.15)
        if seconds_after is None:
            await hang_forever()
        await asyncio.sleep(seconds_after)
        return "ok"

    assert await guard.call(lambda: queued_then(0.01), Deadline(5)) == "ok"  # 0.16 s total, 0.01 s upstream
    with pytest.raises(DependencyUnavailable):
        await guard.call(lambda: queued_then(None), Deadline(5))
    totals = guard.breaker.snapshot()["totals"]
    assert (totals["slow"], totals["failures"], guard.breaker.state) == (0, 0, "closed")


async def test_our_scheduler_shedding_inside_the_op_is_shed_not_a_failure():
    guard = Guard("embedder", GuardConfig(retry=RetryConfig(max_attempts=3), breaker=BreakerConfig(failure_threshold=1)))

    async def shed():
        raise BulkheadFull("embedder-queue", 0.0)

    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(shed, Deadline(5))
    assert err.value.reason.value == "shed" and err.value.attempts == 1
    assert guard.breaker.state == "closed"
