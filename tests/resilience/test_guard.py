"""The guard end to end: deadlines on the real loop, breaker + bulkhead + observer together."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from resilience import (BreakerConfig, BulkheadConfig, Deadline, DependencyUnavailable, Guard, GuardConfig,
                        GuardRegistry, RetryConfig, UpstreamError)
from tests.resilience.fakes import FakeClock, FakeSleep, RecordingObserver


async def hang_forever():
    await asyncio.Event().wait()


class Counter:
    def __init__(self, result="ok", error: BaseException | None = None, clock: FakeClock | None = None,
                 takes_s: float = 0.0) -> None:
        self.calls = 0
        self.result, self.error, self.clock, self.takes_s = result, error, clock, takes_s

    async def __call__(self):
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.takes_s)
        if self.error is not None:
            raise self.error
        return self.result


async def test_a_hanging_dependency_never_outlives_the_deadline():
    guard = Guard("vector_db", GuardConfig(timeout_s=5.0))
    deadline = Deadline(0.3)
    t0 = time.monotonic()
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(hang_forever, deadline)
    elapsed = time.monotonic() - t0
    assert err.value.reason.value == "timeout"
    assert 0.25 <= elapsed < 0.3 + 0.15


async def test_overlapping_attempts_each_time_out_at_their_own_limit():
    """One guard times its attempts with one timer armed for the earliest limit: a shorter limit that
    arrives later, an attempt that ends in time, and a limit left after a fire must all still hold."""
    guard = Guard("llm", GuardConfig(timeout_s=5.0))
    loop = asyncio.get_running_loop()

    async def timed(stage_s: float) -> float:
        t0 = loop.time()
        with pytest.raises(DependencyUnavailable) as err:
            async with asyncio.timeout(3):  # a limit that never fires fails here, not at the suite's timeout
                await guard.call(hang_forever, Deadline(30), stage_timeout_s=stage_s)
        assert err.value.reason.value == "timeout"
        return loop.time() - t0

    long = asyncio.create_task(timed(1.0))  # arms the timer for +1 s
    await asyncio.sleep(0)
    assert await guard.call(Counter(), Deadline(30), stage_timeout_s=0.05) == "ok"  # ends in time
    assert 0.1 <= await timed(0.1) < 0.3, "a shorter limit than the armed one"
    assert 0.1 <= await timed(0.1) < 0.3, "again, after a fire that left the long attempt running"
    assert 1.0 <= await long < 1.3, "the limit that was not due at the earlier fires"


async def test_a_timed_out_attempt_is_not_retried_past_the_stage_timeout():
    # attempt_timeout_s unset: one attempt may use the whole stage, so a hang is paid once, not twice.
    guard = Guard("vector_db", GuardConfig(timeout_s=0.1, retry=RetryConfig(max_attempts=10, base_s=0.0)))
    t0 = time.monotonic()
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(hang_forever, Deadline(5))
    assert err.value.attempts == 1 and err.value.reason.value == "timeout"
    assert time.monotonic() - t0 < 0.1 + 0.1


async def test_fast_failures_are_retried_within_the_stage_timeout():
    guard = Guard("vector_db", GuardConfig(timeout_s=1.0, retry=RetryConfig(max_attempts=3, base_s=0.0)))
    calls = 0

    async def flaky():
        nonlocal calls
        calls += 1
        if calls < 3:
            raise UpstreamError("503", status=503)
        return "ok"

    assert await guard.call(flaky, Deadline(5)) == "ok" and calls == 3


async def test_retries_of_a_hanging_dependency_share_one_deadline():
    guard = Guard("vector_db", GuardConfig(timeout_s=10, attempt_timeout_s=0.1,
                                           retry=RetryConfig(max_attempts=10, base_s=0.0)))
    t0 = time.monotonic()
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(hang_forever, Deadline(0.6), reserve_s=0.25)
    elapsed = time.monotonic() - t0
    assert err.value.attempts >= 3, "0.35 s usable / 0.1 s per attempt"
    assert elapsed < 0.35 + 0.15, "the fallback reserve is left untouched"


async def test_breaker_opens_within_failures_times_timeout():
    guard = Guard("embedder", GuardConfig(timeout_s=0.05, retry=RetryConfig(max_attempts=1),
                                          breaker=BreakerConfig(failure_threshold=3)))
    t0 = time.monotonic()
    for _ in range(3):
        with pytest.raises(DependencyUnavailable):
            await guard.call(hang_forever, Deadline(5))
    assert guard.breaker.state == "open"
    assert time.monotonic() - t0 < 3 * 0.05 + 0.15


async def test_client_disconnect_cancels_the_attempt_and_is_not_a_failure():
    observer = RecordingObserver()
    guard = Guard("llm", GuardConfig(breaker=BreakerConfig(failure_threshold=1)), observer=observer)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def upstream():
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(guard.call(upstream, Deadline(5)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set(), "the upstream call itself was cancelled"
    assert guard.breaker.state == "closed"
    assert guard.bulkhead.in_flight == 0
    assert observer.of("attempt") == [("attempt", "llm", "cancelled")]


async def test_open_breaker_short_circuits_without_touching_upstream(clock):
    observer = RecordingObserver()
    guard = Guard("vector_db", GuardConfig(breaker=BreakerConfig(failure_threshold=2, open_s=30),
                                           retry=RetryConfig(max_attempts=1)), clock=clock, observer=observer)
    failing = Counter(error=UpstreamError("503", status=503))
    for _ in range(2):
        with pytest.raises(DependencyUnavailable):
            await guard.call(failing, Deadline(5, clock=clock))
    healthy = Counter()
    for _ in range(100):
        clock.advance(0.25)
        with pytest.raises(DependencyUnavailable) as err:
            await guard.call(healthy, Deadline(5, clock=clock))
        assert err.value.reason.value == "breaker_open" and err.value.attempts == 0
    assert healthy.calls == 0
    assert err.value.retry_after_s == pytest.approx(5.0)
    assert len(observer.of("short_circuit")) == 100
    assert observer.of("state") == [("state", "vector_db", "closed", "open")]
    clock.advance(5.0)
    assert await guard.call(healthy, Deadline(5, clock=clock)) == "ok"
    assert guard.breaker.state == "closed"


async def test_half_the_stage_timeout_causes_no_trips_and_no_retries(clock):
    config = GuardConfig(timeout_s=1.5, breaker=BreakerConfig(slow_call_s=1.0, min_calls=10, window=20))
    guard = Guard("vector_db", config, clock=clock, sleep=FakeSleep(clock))
    op = Counter(clock=clock, takes_s=0.75)
    for _ in range(100):
        assert await guard.call(op, Deadline(5, clock=clock)) == "ok"
    snap = guard.snapshot()
    assert snap["state"] == "closed"
    assert snap["stats"]["retries"] == 0 and snap["breaker"]["totals"]["slow"] == 0
    assert op.calls == 100


async def test_excess_concurrency_is_shed_fast_and_does_not_trip_the_breaker():
    observer = RecordingObserver()
    guard = Guard("llm", GuardConfig(bulkhead=BulkheadConfig(max_concurrent=2, max_wait_s=0.05),
                                     breaker=BreakerConfig(failure_threshold=1)), observer=observer)
    busy = [asyncio.create_task(guard.call(hang_forever, Deadline(5))) for _ in range(2)]
    await asyncio.sleep(0)
    t0 = time.monotonic()
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(Counter(), Deadline(5))
    assert err.value.reason.value == "shed" and err.value.attempts == 0
    assert time.monotonic() - t0 < 0.05 + 0.1
    assert guard.breaker.state == "closed"
    assert observer.of("shed") == [("shed", "llm")]
    for task in busy:
        task.cancel()
    await asyncio.gather(*busy, return_exceptions=True)
    assert guard.bulkhead.in_flight == 0


@pytest.mark.parametrize("status, reason", [(429, "rate_limited"), (529, "overloaded"), (503, "error"),
                                            (None, "error")])
async def test_upstream_errors_map_to_reasons(clock, status, reason):
    guard = Guard("llm", GuardConfig(retry=RetryConfig(max_attempts=1)), clock=clock)
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(Counter(error=UpstreamError("x", status=status)), Deadline(5, clock=clock))
    assert err.value.reason.value == reason and err.value.status == status


async def test_caller_fault_is_reported_but_never_held_against_the_dependency(clock):
    guard = Guard("llm", GuardConfig(breaker=BreakerConfig(failure_threshold=1)), clock=clock)
    op = Counter(error=UpstreamError("max_tokens too large", status=400, retryable=False, caller_fault=True))
    for _ in range(5):
        with pytest.raises(DependencyUnavailable) as err:
            await guard.call(op, Deadline(5, clock=clock))
        assert err.value.caller_fault and err.value.reason.value == "error" and err.value.status == 400
    assert op.calls == 5
    assert guard.breaker.state == "closed"


async def test_observer_sees_attempts_retries_and_state_changes(clock):
    observer = RecordingObserver()
    guard = Guard("embedder", GuardConfig(retry=RetryConfig(max_attempts=2),
                                          breaker=BreakerConfig(failure_threshold=2)),
                  clock=clock, observer=observer, sleep=FakeSleep(clock))
    with pytest.raises(DependencyUnavailable):
        await guard.call(Counter(error=UpstreamError("503", status=503)), Deadline(5, clock=clock))
    assert observer.events == [("attempt", "embedder", "error"), ("retry", "embedder", "error"),
                               ("state", "embedder", "closed", "open"), ("attempt", "embedder", "error")]


async def test_a_broken_observer_does_not_break_calls(clock):
    class Broken:
        def __getattr__(self, name):
            def fail(*args):
                raise RuntimeError("telemetry bug")
            return fail

    guard = Guard("llm", GuardConfig(), clock=clock, observer=Broken())
    assert await guard.call(Counter(), Deadline(5, clock=clock)) == "ok"


async def test_registry_builds_guards_and_snapshots_as_json(clock):
    changes = []
    registry = GuardRegistry({"embedder": GuardConfig(), "vector_db": GuardConfig(timeout_s=1.5),
                              "llm": GuardConfig(breaker=BreakerConfig(failure_threshold=1))},
                             clock=clock, listeners=[lambda *c: changes.append(c)])
    assert [g.name for g in registry] == ["embedder", "vector_db", "llm"]
    assert registry["vector_db"].config.timeout_s == 1.5
    with pytest.raises(DependencyUnavailable):
        await registry["llm"].call(Counter(error=UpstreamError("503", status=503)), Deadline(5, clock=clock))
    snap = json.loads(json.dumps(registry.snapshot()))
    assert snap["llm"]["state"] == "open" and snap["llm"]["breaker"]["open_remaining_s"] == 30
    assert snap["embedder"]["state"] == "closed"
    assert registry.shared_status == "off"
    assert changes == [("llm", "closed", "open")]
    await registry.close()


async def test_check_admits_short_circuits_before_any_work():
    from resilience import Deadline, DependencyUnavailable, Guard, GuardConfig

    guard = Guard("vector_db", GuardConfig())
    guard.check_admits()  # closed: no-op
    guard.breaker.force_open()
    with pytest.raises(DependencyUnavailable) as err:
        guard.check_admits()
    assert err.value.reason.value == "breaker_open" and err.value.attempts == 0
    assert guard.stats["short_circuits"] == 1
    guard.breaker.close()
    assert await guard.call(lambda: _value(7), Deadline(1.0)) == 7


async def _value(v):
    return v
