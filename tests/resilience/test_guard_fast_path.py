"""What the guard's healthy-call shortcuts must not skip.

A healthy ``Guard.call`` takes a closed breaker's permit on one state read, a free bulkhead slot without a
coroutine, reads the loop's clock once for the guard's clock, the retry budget and the deadline (when all
of them are ``time.monotonic``), and times its attempt as an exact entry on the loop's watchdog instead of an
``asyncio.Timeout``. Each test here fails if one of those shortcuts is taken where it must not be.
"""
from __future__ import annotations

import asyncio

import pytest

from resilience import BreakerConfig, BulkheadConfig, Deadline, DependencyUnavailable, Guard, GuardConfig, RetryConfig
from resilience.watchdog import watchdog
from tests.resilience.fakes import FakeClock, RecordingObserver


async def test_shortcuts_never_skip_a_full_bulkhead_an_open_breaker_or_the_probe_limit(clock):
    guard = Guard("llm", GuardConfig(bulkhead=BulkheadConfig(max_concurrent=1, max_wait_s=0),
                                     breaker=BreakerConfig(failure_threshold=1, open_s=10, half_open_permits=1),
                                     retry=RetryConfig(max_attempts=1)), clock=clock)
    entered, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def hold() -> str:
        calls.append("hold")
        entered.set()
        await release.wait()
        return "held"

    async def quick() -> str:
        calls.append("quick")
        return "ok"

    async def fail() -> str:
        raise RuntimeError("down")

    async def refused(reason: str) -> None:
        with pytest.raises(DependencyUnavailable) as err:
            await guard.call(quick, Deadline(5, clock=clock))
        assert err.value.reason.value == reason and err.value.attempts == 0

    holder = asyncio.create_task(guard.call(hold, Deadline(5, clock=clock)))
    await entered.wait()
    await refused("shed")  # the one slot is taken: no free-slot shortcut
    release.set()
    assert await holder == "held"

    with pytest.raises(DependencyUnavailable):
        await guard.call(fail, Deadline(5, clock=clock))
    assert guard.breaker.state == "open"
    await refused("breaker_open")  # open: no closed-breaker shortcut

    clock.advance(10)  # half-open: one probe at a time
    entered.clear(), release.clear()
    probe = asyncio.create_task(guard.call(hold, Deadline(5, clock=clock)))
    await entered.wait()
    assert guard.breaker.state == "half_open"
    await refused("breaker_open")
    release.set()
    assert await probe == "held"
    assert guard.breaker.state == "closed"
    assert await guard.call(quick, Deadline(5, clock=clock)) == "ok"
    assert calls == ["hold", "hold", "quick"]


async def test_an_injected_clock_times_the_attempt_and_counts_the_retry_budget(clock):
    """The loop's clock stands in for the guard's only when the guard's is ``time.monotonic``."""
    guard = Guard("llm", GuardConfig(breaker=BreakerConfig(slow_call_s=1.0, slow_call_rate=0.5, min_calls=1,
                                                           window=1)), clock=clock)

    async def slow_on_the_injected_clock() -> str:
        clock.advance(2.0)
        return "ok"

    assert await guard.call(slow_on_the_injected_clock, Deadline(30, clock=clock)) == "ok"
    assert guard.breaker.snapshot()["totals"]["slow"] == 1
    assert guard.breaker.state == "open"  # one slow call of one is over the 50 % slow-call rate
    assert guard.retry.budget.snapshot()["calls"] == 1


async def test_a_deadline_on_its_own_clock_is_read_on_that_clock():
    clock = FakeClock(start=-1e9)  # far from the loop's clock, so a reading of the wrong one shows
    guard = Guard("llm")  # runs on time.monotonic, the deadline does not
    called = 0

    async def op() -> str:
        nonlocal called
        called += 1
        return "ok"

    deadline = Deadline(1.0, clock=clock)
    assert await guard.call(op, deadline) == "ok"
    clock.advance(2.0)
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(op, deadline)
    assert err.value.reason.value == "timeout" and err.value.attempts == 0
    assert called == 1


async def test_a_client_disconnect_racing_the_attempt_timeout_stays_a_cancellation():
    """The caller's cancel wins over our timeout (``asyncio.timeout``'s rule): a request whose client left
    as its attempt timed out is cancelled, not turned into a timeout the breaker would count."""
    observer = RecordingObserver()
    guard = Guard("llm", GuardConfig(breaker=BreakerConfig(failure_threshold=1)), observer=observer)

    async def op() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # our attempt timeout...
            caller.cancel()  # ...and the client goes away in the same instant
            raise

    caller = asyncio.create_task(guard.call(op, Deadline(5), stage_timeout_s=0.05))
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert observer.of("attempt") == [("attempt", "llm", "cancelled")]
    assert guard.breaker.state == "closed" and guard.stats["cancelled"] == 1


async def test_a_timeout_the_op_outlived_leaves_no_cancel_request_behind():
    guard = Guard("llm")

    async def op() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # our attempt timeout, which this op shrugs off
            return "late"
        return "never"

    assert await guard.call(op, Deadline(5), stage_timeout_s=0.05) == "late"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the timeout withdrew its cancel request


async def test_the_attempt_limit_is_exact_and_every_attempt_leaves_the_watchdog():
    """The attempt timeout is an exact entry on the loop's watchdog: it ends the attempt when a plain timer
    armed for the same time fires (a coarse one may be 10 % late: 40 ms here, and the breaker would hear it),
    and no attempt, however it ended, stays registered."""
    guard = Guard("llm", GuardConfig(timeout_s=0.4, retry=RetryConfig(max_attempts=1)))
    loop = asyncio.get_running_loop()
    dog = watchdog()
    plain: list[float] = []
    cut_at: list[float] = []

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cut_at.append(loop.time())
            raise

    t0 = loop.time()
    loop.call_at(t0 + 0.4, lambda: plain.append(loop.time()))
    with pytest.raises(DependencyUnavailable) as err:
        await guard.call(hang, Deadline(5))
    assert err.value.reason.value == "timeout" and cut_at[0] - t0 >= 0.4 and cut_at[0] - plain[0] < 0.02

    async def ok() -> str:
        return "ok"

    async def boom() -> None:
        raise RuntimeError("boom")

    assert await guard.call(ok, Deadline(5)) == "ok"
    with pytest.raises(DependencyUnavailable):
        await guard.call(boom, Deadline(5))
    caller = asyncio.create_task(guard.call(hang, Deadline(5)))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not dog.exact and not dog.live
