"""The loop's coarse limits: never early, armed to fire within the slack, nothing left registered."""
from __future__ import annotations

import asyncio

import pytest

from resilience.watchdog import Timeout, Watchdog, slack_for, watchdog

pytestmark = pytest.mark.timeout(10)


class Probe:
    """Records when the watchdog expired it; ``rearm`` times re-arms itself from ``expire`` first."""

    def __init__(self, dog: Watchdog, limit_s: float, rearm: int = 0) -> None:
        self.dog, self.limit_s, self.rearm = dog, limit_s, rearm
        self.fired_at: float | None = None
        self.early = False
        self.done = asyncio.Event()
        t0 = dog.loop.time()
        dog.arm(self, limit_s)
        self.due, self.latest = dog.live[self]
        assert self.due >= t0 + limit_s and self.latest == self.due + slack_for(limit_s)

    def expire(self) -> None:
        now = self.dog.loop.time()
        self.early = self.early or now < self.due
        if self.rearm:
            self.rearm -= 1
            self.dog.arm(self, self.limit_s)
            self.due, self.latest = self.dog.live[self]
            return
        self.fired_at = now
        self.done.set()


async def test_limits_fire_not_before_their_time_and_the_timer_is_armed_within_the_slack():
    dog = watchdog()
    assert watchdog() is dog
    probes = []
    for limit in (0.3, 0.05, 0.2, 0.05, 0.1, 0.12, 0.14, 0.16):  # out of order: a shorter limit must pull the timer earlier
        probes.append(Probe(dog, limit))
        assert dog.armed <= min(p.latest for p in probes if p.fired_at is None)
    await asyncio.wait_for(asyncio.gather(*(p.done.wait() for p in probes)), 5)
    assert not any(p.early for p in probes)
    assert all(p.fired_at is not None and p.fired_at >= p.due for p in probes)
    assert not dog.live
    await asyncio.sleep(0)
    assert dog._handle is None and dog.armed == float("inf")  # nothing registered: no timer ticks


async def test_an_entry_re_armed_from_expire_fires_again_later():
    dog = watchdog()
    probe = Probe(dog, 0.05, rearm=2)
    await asyncio.wait_for(probe.done.wait(), 5)
    assert probe.rearm == 0 and not probe.early and not dog.live


async def test_a_disarmed_limit_never_fires_and_the_timer_stops_at_its_next_tick():
    dog = watchdog()
    gone = Probe(dog, 0.05)
    kept = Probe(dog, 0.15)
    dog.disarm(gone)
    dog.disarm(gone)  # twice is harmless
    await asyncio.wait_for(kept.done.wait(), 5)
    assert gone.fired_at is None and not dog.live
    for _ in range(1000):  # one per request: no timer of its own, no entry left behind
        dog.disarm(Probe(dog, 30.0))
    assert not dog.live
    armed = dog._handle
    assert armed is not None  # the 30 s tick, left running...
    dog._tick()  # ...finds nothing and stops
    assert dog._handle is None and dog.armed == float("inf")


async def test_one_failing_entry_does_not_keep_the_others_from_firing():
    dog = watchdog()
    errors = []
    dog.loop.set_exception_handler(lambda loop, ctx: errors.append(ctx["exception"]))

    class Broken:
        def expire(self) -> None:
            raise RuntimeError("boom")

    dog.arm(Broken(), 0.02)
    probe = Probe(dog, 0.02)
    await asyncio.wait_for(probe.done.wait(), 5)
    assert [type(e) for e in errors] == [RuntimeError]


class Exact:
    """An exact limit (no slack) on ``dog``, due at loop time ``due``; records when it fired."""

    def __init__(self, dog: Watchdog, due: float) -> None:
        self.dog, self.due = dog, due
        self.fired_at: float | None = None
        self.done = asyncio.Event()
        dog.arm_exact(self, due)

    def expire(self) -> None:
        self.fired_at = self.dog.loop.time()
        self.done.set()


async def test_exact_limits_fire_when_a_plain_timer_would_not_within_a_slack():
    """The guard's attempt limits: a limit of 0.4 s may fire 40 ms late with slack, never as an exact one. Each
    is compared with a ``call_at`` handle for the same time (which loop latency delays just as much)."""
    dog = watchdog()
    loop = dog.loop
    coarse = Probe(dog, 2.0)  # armed first, for 2.2 s: each exact limit must pull the timer earlier
    t0 = loop.time()
    plain: dict[float, float] = {}
    exact = []
    for d in (0.6, 0.4, 0.5):
        exact.append(Exact(dog, t0 + d))
        loop.call_at(t0 + d, lambda d=d: plain.setdefault(d, loop.time()))
    await asyncio.wait_for(asyncio.gather(*(e.done.wait() for e in exact)), 5)
    for d, e in zip((0.6, 0.4, 0.5), exact):
        assert e.fired_at is not None and e.fired_at >= e.due  # never early
        assert e.fired_at - plain[d] < 0.02  # not late (slack would be 40-60 ms)
    assert not dog.exact and coarse.fired_at is None and dog.armed == coarse.latest
    dog.disarm(coarse)


async def test_a_disarmed_exact_limit_never_fires_and_leaves_nothing_behind():
    dog = watchdog()
    loop = dog.loop
    gone = Exact(dog, loop.time() + 0.02)
    kept = Exact(dog, loop.time() + 0.05)
    dog.disarm(gone)
    await asyncio.wait_for(kept.done.wait(), 5)
    assert gone.fired_at is None and not dog.exact
    for _ in range(1000):  # one per guarded attempt
        dog.disarm(Exact(dog, loop.time() + 30.0))
    assert not dog.exact
    dog._tick()  # the 30 s tick finds nothing and stops
    assert dog._handle is None and dog.armed == float("inf")


class CountingWatchdog(Watchdog):
    __slots__ = ("idle_ticks",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.idle_ticks = 0

    def _tick(self) -> None:
        armed = len(self.exact)
        super()._tick()
        self.idle_ticks += len(self.exact) == armed  # it ran before anything was due


def test_on_a_coarse_clock_an_exact_limit_is_neither_early_nor_ticked_for_early():
    """asyncio runs a timer up to the clock's resolution early (``BaseEventLoop._run_once``: ``when <
    time() + _clock_resolution``; 15.6 ms on Windows, 50 ms here): that must not fire an exact limit early,
    nor tick the watchdog before anything is due (re-armed for the same time, such a tick runs again at once
    until the clock moves on)."""
    loop = asyncio.new_event_loop()
    loop._clock_resolution = 0.05  # type: ignore[attr-defined]  # what BaseEventLoop reads from the clock's info

    async def main() -> tuple[CountingWatchdog, list[Exact]]:
        dog = CountingWatchdog(loop)
        t0 = loop.time()
        limits = [Exact(dog, t0 + 0.1), Exact(dog, t0 + 0.16)]
        # The loop is awake 30 ms before the first limit, and (a timer runs up to 50 ms early, so not before
        # 0.12) 25 ms after it, 35 ms before the second.
        loop.call_at(t0 + 0.07, lambda: None)
        loop.call_at(t0 + 0.125, lambda: None)
        await asyncio.wait_for(asyncio.gather(*(e.done.wait() for e in limits)), 5)
        return dog, limits

    try:
        dog, limits = loop.run_until_complete(main())
    finally:
        loop.close()
    for e in limits:
        assert e.fired_at is not None and e.due <= e.fired_at < e.due + 0.05 + 0.03  # late by the resolution at most
    assert dog.idle_ticks == 0 and not dog.exact


async def test_timeout_raises_timeout_error_not_before_its_limit():
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    timer = Timeout(0.2)
    with pytest.raises(TimeoutError):
        async with timer:
            await asyncio.sleep(30)
    assert loop.time() - t0 >= 0.2
    assert timer.expired()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # our cancel request was withdrawn
    await asyncio.sleep(0)  # and nothing cancels us later
    assert not watchdog().live


async def test_timeout_in_time_or_none_leaves_nothing_registered():
    async with Timeout(5) as timer:
        await asyncio.sleep(0)
    assert not timer.expired() and not watchdog().live
    async with Timeout(None) as timer:
        await asyncio.sleep(0.01)
    assert not timer.expired()
    with pytest.raises(ValueError):  # errors of the body pass through and disarm too
        async with Timeout(5):
            raise ValueError
    assert not watchdog().live


async def test_zero_or_negative_timeout_expires_at_once():
    for limit in (0.0, -1.0):
        with pytest.raises(TimeoutError):
            async with Timeout(limit):
                await asyncio.sleep(30)


async def test_a_cancel_that_was_not_ours_stays_a_cancel():
    """asyncio.Timeout's rule: if the task is cancelled from outside as well, CancelledError propagates."""
    started = asyncio.Event()

    async def body() -> None:
        async with Timeout(0.05):
            started.set()
            try:
                await asyncio.sleep(30)
            finally:
                await asyncio.sleep(0.2)  # our limit fires while the outside cancel is pending

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not watchdog().live

    async def inner_cancelled_first() -> None:  # already being cancelled when the block starts
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        async with Timeout(0.01):
            await asyncio.sleep(30)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(inner_cancelled_first())


def test_a_closed_loop_is_not_kept_alive_by_its_watchdog():
    """The suite runs a loop per test: a registry that held every loop that ever used a watchdog (a
    WeakKeyDictionary whose values hold their keys) kept each one alive, with whatever was still armed on it."""
    import gc
    import weakref

    refs = []

    async def use():
        refs.append(weakref.ref(asyncio.get_running_loop()))
        async with Timeout(5.0):
            await asyncio.sleep(0)

    for _ in range(3):
        asyncio.run(use())
    gc.collect()
    assert sum(r() is not None for r in refs) <= 1  # at most the last loop's (watchdog._last)
