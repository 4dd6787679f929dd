"""Circuit breaker: when it opens, what it lets through, what never counts. Time is a FakeClock."""
from __future__ import annotations

import asyncio
import json

import pytest

from resilience import BreakerConfig, CircuitBreaker, CircuitOpenError, UpstreamError
from tests.resilience.fakes import FakeClock


class Upstream:
    """A dependency stand-in: counts invocations; fails, succeeds or takes (fake) time on demand."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls = 0

    def ok(self, seconds: float = 0.01):
        async def op():
            self.calls += 1
            self.clock.advance(seconds)
            return "ok"
        return op

    def fail(self, exc: BaseException | None = None):
        async def op():
            self.calls += 1
            raise exc if exc is not None else UpstreamError("boom", status=503)
        return op


def cfg(**kw) -> BreakerConfig:
    base = dict(failure_threshold=100, failure_rate=1.0, window=10, min_calls=10, slow_call_s=1.0,
                slow_call_rate=1.0, open_s=30.0, half_open_permits=1)
    return BreakerConfig(**{**base, **kw})


async def run(breaker: CircuitBreaker, op) -> str:
    """Call through the breaker; return the result or the kind of error."""
    try:
        return await breaker.call(op)
    except CircuitOpenError:
        return "short-circuited"
    except UpstreamError:
        return "failed"


async def open_breaker(breaker: CircuitBreaker, up: Upstream) -> None:
    for _ in range(breaker.config.failure_threshold):
        await run(breaker, up.fail())
    assert breaker.state == "open"


async def test_opens_after_consecutive_failures(clock):
    breaker, up = CircuitBreaker("db", cfg(failure_threshold=3), clock=clock), Upstream(clock)
    assert [await run(breaker, up.fail()) for _ in range(2)] == ["failed", "failed"]
    assert breaker.state == "closed"
    assert await run(breaker, up.ok()) == "ok"  # a success resets the consecutive count
    assert [await run(breaker, up.fail()) for _ in range(3)] == ["failed"] * 3
    assert breaker.state == "open"
    assert await run(breaker, up.ok()) == "short-circuited"
    assert up.calls == 6


async def test_after_a_long_run_of_successes_failures_still_open_it(clock):
    """A success while closed skips pybreaker's bookkeeping when it has nothing to reset; the consecutive
    count (reset by a success after failures), the window's running counts and both ways of opening hold."""
    by_count = CircuitBreaker("a", cfg(failure_threshold=5), clock=clock)
    by_rate = CircuitBreaker("b", cfg(failure_threshold=100, failure_rate=0.5, window=10, min_calls=10), clock=clock)
    up = Upstream(clock)
    for breaker in (by_count, by_rate):
        for _ in range(1000):
            await run(breaker, up.ok())
        for _ in range(4):
            await run(breaker, up.fail())
        await run(breaker, up.ok())
        assert breaker.state == "closed" and breaker.snapshot()["consecutive_failures"] == 0
        assert breaker.snapshot()["window"]["failures"] == 4
    for _ in range(4):
        await run(by_count, up.fail())
    assert by_count.state == "closed", "the success reset the consecutive count: 4 in a row"
    await run(by_count, up.fail())
    assert by_count.state == "open", "5 in a row"
    await run(by_rate, up.fail())
    assert by_rate.state == "open", "5 failures of the last 10 (the oldest success slid out)"


async def test_failure_rate_window_waits_for_min_calls(clock):
    breaker = CircuitBreaker("db", cfg(failure_rate=0.5, window=10, min_calls=10), clock=clock)
    up = Upstream(clock)
    # Alternate fail/ok: 50% failures, never 2 in a row.
    for i in range(9):
        await run(breaker, up.fail() if i % 2 == 0 else up.ok())
    assert breaker.state == "closed", "9 calls < min_calls: rates are not judged yet"
    assert breaker.snapshot()["window"]["failures"] == 5
    await run(breaker, up.ok())  # 10th call: 5/10 failures = 50% ≥ failure_rate
    assert breaker.state == "open"


async def test_failure_rate_below_threshold_stays_closed(clock):
    breaker = CircuitBreaker("db", cfg(failure_rate=0.5, window=10, min_calls=10), clock=clock)
    up = Upstream(clock)
    for i in range(100):  # 40% failures, the window keeps sliding
        await run(breaker, up.fail() if i % 5 in (0, 2) else up.ok())
    assert breaker.state == "closed"
    assert breaker.snapshot()["window"] == {"calls": 10, "failures": 4, "slow": 0,
                                            "failure_rate": 0.4, "slow_call_rate": 0.0}


async def test_slow_calls_open_the_breaker(clock):
    breaker = CircuitBreaker("llm", cfg(slow_call_s=1.0, slow_call_rate=0.5, window=4, min_calls=4), clock=clock)
    up = Upstream(clock)
    for seconds in (0.2, 1.0, 0.2):  # 1.0 is not slower than slow_call_s
        assert await run(breaker, up.ok(seconds)) == "ok"
    assert breaker.state == "closed"
    await run(breaker, up.ok(1.5))
    assert breaker.state == "closed", "1 slow of 4"
    await run(breaker, up.ok(1.5))
    assert breaker.state == "open", "2 slow of the last 4 = 50%"


async def test_open_breaker_never_calls_upstream_until_open_s_passes(clock):
    breaker, up = CircuitBreaker("db", cfg(failure_threshold=2, open_s=30), clock=clock), Upstream(clock)
    await open_breaker(breaker, up)
    calls_at_open = up.calls
    for _ in range(299):  # 29.9 s of traffic
        clock.advance(0.1)
        assert await run(breaker, up.ok()) == "short-circuited"
    assert up.calls == calls_at_open
    assert breaker.open_remaining_s() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.state == "half_open"
    assert await run(breaker, up.ok()) == "ok"
    assert up.calls == calls_at_open + 1
    assert breaker.state == "closed"


async def test_half_open_admits_exactly_the_permits(clock):
    breaker = CircuitBreaker("db", cfg(failure_threshold=1, half_open_permits=2), clock=clock)
    up = Upstream(clock)
    await open_breaker(breaker, up)
    clock.advance(30)
    release = asyncio.Event()
    started = 0

    async def probe():
        nonlocal started
        started += 1
        await release.wait()
        return "ok"

    tasks = [asyncio.create_task(run(breaker, probe)) for _ in range(5)]
    await asyncio.sleep(0)  # every task reaches the breaker; 2 start their op, 3 are turned away
    assert started == 2
    assert breaker.snapshot()["half_open_in_flight"] == 2
    done = [t.result() for t in tasks if t.done()]
    assert done == ["short-circuited"] * 3
    release.set()
    assert sorted(await asyncio.gather(*tasks)) == ["ok", "ok"] + ["short-circuited"] * 3
    assert breaker.state == "closed"


async def test_failed_probe_reopens_for_a_full_interval(clock):
    breaker, up = CircuitBreaker("db", cfg(failure_threshold=1, open_s=10), clock=clock), Upstream(clock)
    await open_breaker(breaker, up)
    clock.advance(10)
    assert await run(breaker, up.fail()) == "failed"
    assert breaker.state == "open"
    before = up.calls
    clock.advance(9.9)
    assert await run(breaker, up.ok()) == "short-circuited"
    assert up.calls == before
    clock.advance(0.1)
    assert await run(breaker, up.ok()) == "ok"


async def test_cancellation_and_caller_faults_never_count(clock):
    breaker = CircuitBreaker("db", cfg(failure_threshold=1), clock=clock)
    up = Upstream(clock)
    hang = asyncio.Event()

    async def hanging():
        await hang.wait()

    task = asyncio.create_task(breaker.call(hanging))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(UpstreamError):
        await breaker.call(up.fail(UpstreamError("bad request", status=400, retryable=False, caller_fault=True)))
    assert breaker.state == "closed"
    assert breaker.snapshot()["totals"]["ignored"] == 2
    assert breaker.snapshot()["consecutive_failures"] == 0
    await run(breaker, up.fail())  # a real failure still trips it (threshold 1)
    assert breaker.state == "open"


async def test_cancelled_probe_neither_closes_nor_keeps_its_permit(clock):
    breaker, up = CircuitBreaker("db", cfg(failure_threshold=1), clock=clock), Upstream(clock)
    await open_breaker(breaker, up)
    clock.advance(30)
    hang = asyncio.Event()

    async def hanging():
        await hang.wait()

    task = asyncio.create_task(breaker.call(hanging))
    await asyncio.sleep(0)
    assert await run(breaker, up.ok()) == "short-circuited"  # the only permit is taken
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "half_open", "a cancelled probe is no verdict"
    assert await run(breaker, up.ok()) == "ok"  # its permit was given back
    assert breaker.state == "closed"


async def test_listeners_see_every_transition(clock):
    seen = []
    breaker = CircuitBreaker("db", cfg(failure_threshold=1, open_s=5), clock=clock,
                             listeners=[lambda *change: seen.append(change)])
    up = Upstream(clock)
    await open_breaker(breaker, up)
    clock.advance(5)
    await run(breaker, up.fail())
    clock.advance(5)
    await run(breaker, up.ok())
    assert seen == [("db", "closed", "open"), ("db", "open", "half_open"), ("db", "half_open", "open"),
                    ("db", "open", "half_open"), ("db", "half_open", "closed")]


async def test_a_failing_listener_does_not_break_the_breaker(clock):
    def bad(*_):
        raise RuntimeError("listener bug")

    breaker, up = CircuitBreaker("db", cfg(failure_threshold=1), clock=clock, listeners=[bad]), Upstream(clock)
    await open_breaker(breaker, up)
    assert await run(breaker, up.ok()) == "short-circuited"


async def test_forced_open_holds_until_closed(clock):
    breaker, up = CircuitBreaker("db", cfg(open_s=30), clock=clock), Upstream(clock)
    breaker.force_open()
    clock.advance(3600)
    assert breaker.state == "open" and breaker.forced
    assert breaker.open_remaining_s() is None
    assert await run(breaker, up.ok()) == "short-circuited"
    breaker.close()
    assert breaker.state == "closed" and not breaker.forced
    assert await run(breaker, up.ok()) == "ok"
    assert up.calls == 1


async def test_trip_opens_for_open_s_and_reset_zeroes_counters(clock):
    breaker, up = CircuitBreaker("db", cfg(open_s=30), clock=clock), Upstream(clock)
    await run(breaker, up.fail())
    breaker.trip()
    assert breaker.open_remaining_s() == pytest.approx(30)
    clock.advance(30)
    assert breaker.state == "half_open"
    breaker.reset()
    snap = breaker.snapshot()
    assert snap["state"] == "closed"
    assert snap["totals"]["failures"] == 0 and snap["consecutive_failures"] == 0


async def test_late_result_of_a_call_started_before_a_trip_is_dropped(clock):
    breaker, up = CircuitBreaker("db", cfg(failure_threshold=1, open_s=5), clock=clock), Upstream(clock)
    release = asyncio.Event()

    async def slow_fail():
        await release.wait()
        raise UpstreamError("late", status=503)

    late = asyncio.create_task(run(breaker, slow_fail))
    await asyncio.sleep(0)
    await open_breaker(breaker, up)
    clock.advance(5)
    assert breaker.state == "half_open"
    release.set()
    assert await late == "failed"
    assert breaker.state == "half_open", "a failure from the closed era must not re-open it"
    assert breaker.snapshot()["totals"]["stale"] == 1


async def test_snapshot_is_json_and_says_when_it_opened(clock):
    breaker = CircuitBreaker("db", cfg(failure_threshold=1, open_s=30), clock=clock, wall_clock=lambda: 1.7e9)
    await open_breaker(breaker, Upstream(clock))
    clock.advance(10)
    snap = json.loads(json.dumps(breaker.snapshot()))
    assert snap["state"] == "open"
    assert snap["opened_at"] == "2023-11-14T22:13:20+00:00"
    assert snap["open_until"] == "2023-11-14T22:13:50+00:00"
    assert snap["open_remaining_s"] == pytest.approx(20)
    assert snap["shared"] == "off"
    assert snap["config"]["open_s"] == 30
    assert snap["totals"]["failures"] == 1 and snap["totals"]["opened"] == 1


async def test_reading_state_never_moves_an_open_breaker(clock):
    """/health, /metrics and admin GETs read ``state``/``snapshot``: the open → half_open transition (its
    listeners: the gauge, the transitions counter, the event) waits for a call."""
    seen = []
    breaker = CircuitBreaker("db", cfg(failure_threshold=1, open_s=5), clock=clock,
                             listeners=[lambda *change: seen.append(change)])
    up = Upstream(clock)
    await open_breaker(breaker, up)
    clock.advance(60)
    for _ in range(3):
        assert breaker.state == "half_open", "the state the next call would meet"
        assert breaker.snapshot()["state"] == "half_open" and breaker.would_admit()
        assert breaker.open_remaining_s() is None
    assert seen == [("db", "closed", "open")], "a read made a transition"
    assert await run(breaker, up.ok()) == "ok"
    assert seen == [("db", "closed", "open"), ("db", "open", "half_open"), ("db", "half_open", "closed")]
