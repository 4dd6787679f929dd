"""The limits of one event loop on one timer: arming a limit is a dict insert, disarming a pop.

Long limits that almost never fire (a stream's idle gap, a client that stops reading, a response header wait:
tens of seconds, on every request) cost a ``TimerHandle`` pushed on the loop's heap and cancelled when armed
with ``loop.call_later``/``asyncio.timeout``. Like nginx's and Envoy's idle timers, :class:`Watchdog` keeps them
in a dict and one loop timer armed for the earliest *latest* firing time: a limit of ``L`` seconds fires
between ``L`` and ``L + slack`` after it was armed, ``slack = min(L / 10, 1 s)`` (a 0.2 s test limit fires
within 0.22 s; a 60 s limit within 61 s). A limit never fires before its time. The timer is re-armed only when a
new limit must fire before it, so a stream of requests with the same limits arms no timer of its own; the
timer stops once nothing is registered (after at most one more tick).

An *exact* limit (:meth:`Watchdog.arm_exact`; the guard's attempt timeouts: a breaker must hear a timeout at its
time, not up to 10 % late) has no slack: it fires at its time, late by at most the loop clock's resolution, as a
``loop.call_at`` handle of its own would, and shares the one timer all the same.

:func:`watchdog` gives the running loop's; :class:`Timeout` is ``asyncio.timeout`` on it; :class:`TaskLimit` is
the cancel/withdraw rule both it and the guard's attempts follow. Nothing here knows about HTTP.
"""
from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any, Protocol

MAX_SLACK_S = 1.0
SLACK_SHARE = 0.1
_INF = float("inf")


def slack_for(limit_s: float) -> float:
    """How late (seconds) a limit of ``limit_s`` seconds may fire."""
    return min(limit_s * SLACK_SHARE, MAX_SLACK_S) if limit_s > 0 else 0.0


class Expiring(Protocol):
    def expire(self) -> None:
        """Called on the loop once the limit is over; the entry is already disarmed (it may re-arm)."""


class Watchdog:
    """The limits of one event loop, coarse and exact, on one timer. Use from the loop's thread only."""

    __slots__ = ("loop", "live", "exact", "armed", "_resolution", "_handle", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.live: dict[Expiring, tuple[float, float]] = {}  # entry -> (due, latest), loop time
        # entry -> due: the exact ones apart, so arming one allocates no tuple (a tuple per guarded attempt cost
        # ~0.15 us of a ~4.7 us Guard.call, GC included).
        self.exact: dict[Expiring, float] = {}
        self.armed = _INF  # the time the timer is armed for (it ticks one clock resolution later; inf: not running)
        # BaseEventLoop._run_once runs a handle once `when < loop.time() + _clock_resolution`: up to this early.
        self._resolution: float = getattr(loop, "_clock_resolution", time.get_clock_info("monotonic").resolution)
        self._handle: asyncio.TimerHandle | None = None

    def arm_at(self, item: Expiring, due: float, slack_s: float) -> None:
        """Call ``item.expire()`` between loop time ``due`` and ``due + slack_s`` unless :meth:`disarm`\\ ed
        first. Re-arming an armed item replaces its limit."""
        latest = due + slack_s
        self.live[item] = (due, latest)
        if latest < self.armed:
            self._arm(latest)

    def arm_exact(self, item: Expiring, due: float) -> None:
        """Call ``item.expire()`` at loop time ``due``, late by at most the loop clock's resolution (never
        early), unless :meth:`disarm`\\ ed first. Re-arming replaces the limit; an item is armed either exact
        or with slack, not both. A caller on a hot path may store ``exact[item] = due`` itself and call this
        only when ``due`` is earlier than :attr:`armed`."""
        self.exact[item] = due
        if due < self.armed:
            self._arm(due)

    def arm(self, item: Expiring, limit_s: float) -> None:
        """Call ``item.expire()`` ``limit_s`` seconds from now (late by at most :func:`slack_for`)."""
        self.arm_at(item, self.loop.time() + limit_s, slack_for(limit_s))

    def disarm(self, item: Expiring) -> None:
        """Forget ``item`` (no-op if it is not armed). The timer is left running: it stops at its next tick
        if nothing is registered by then, so a loop that arms and disarms per request creates no timer."""
        self.live.pop(item, None)
        self.exact.pop(item, None)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        # One resolution later, so the loop never runs the tick before `when`: an exact entry would be found not
        # due, re-armed for the same time and run again at once until the clock moved past it.
        self._handle = self.loop.call_at(when + self._resolution, self._tick)
        self.armed = when

    def _tick(self) -> None:
        self._handle = None
        self.armed = _INF
        now = self.loop.time()
        expired = []
        nearest = _INF
        for item, (due, latest) in self.live.items():
            if due <= now:
                expired.append(item)
            elif latest < nearest:
                nearest = latest
        for item in expired:
            del self.live[item]
        coarse = len(expired)
        for item, due in self.exact.items():
            if due <= now:
                expired.append(item)
            elif due < nearest:
                nearest = due
        for item in expired[coarse:]:
            del self.exact[item]
        if nearest != _INF:
            self._arm(nearest)
        for item in expired:
            try:
                item.expire()
            except Exception as exc:  # noqa: BLE001 - one entry's bug must not keep the others from firing
                self.loop.call_exception_handler({"message": "watchdog entry failed to expire",
                                                  "exception": exc, "entry": item})


# By id(loop), holding the watchdogs weakly: a Watchdog holds its loop, so a WeakKeyDictionary (value -> key) would
# keep every loop that ever used one alive. A watchdog lives while something uses it (an armed entry's timer
# handle, an IdleWatch/ClientWatch/Timeout, _last); an id cannot be reused while its loop (held by the dog) lives.
_BY_LOOP: weakref.WeakValueDictionary[int, Watchdog] = weakref.WeakValueDictionary()
_last: Watchdog | None = None  # the last loop's, checked first (one loop per process is the common case)


def watchdog() -> Watchdog:
    """The running loop's watchdog (created on first use). Raises RuntimeError outside a running loop."""
    global _last
    loop = asyncio.get_running_loop()
    dog = _last
    if dog is not None and dog.loop is loop:
        return dog
    dog = _BY_LOOP.get(id(loop))
    if dog is None or dog.loop is not loop:
        dog = _BY_LOOP[id(loop)] = Watchdog(loop)
    _last = dog
    return dog


class TaskLimit:
    """A limit that cancels ``task`` when the watchdog expires it, withdrawn by ``asyncio.Timeout``'s rules:
    our cancel request is always taken back (``uncancel``) once the body ended, and the body ended by *our*
    limit only if it raised ``CancelledError`` and no one else asked to cancel the task (before the limit
    started, ``cancelling``, or since). :class:`Timeout` and the guard's attempts both follow it."""

    __slots__ = ("task", "cancelling", "fired")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task: asyncio.Task[Any] | None = task
        self.cancelling = task.cancelling()  # cancel requests that were not ours
        self.fired = False

    def expire(self) -> None:
        """Cancel the task now, as ``asyncio.timeout``'s own expiry does: a result that lands in the same loop
        iteration as the limit loses (``asyncio.Timeout.reschedule`` gave it one more iteration)."""
        self.fired = True
        assert self.task is not None
        self.task.cancel()

    def timed_out(self, exc_type: type[BaseException] | None) -> bool:
        """Once the body ended (``exc_type``: how; ``None``: it returned): whether our limit ended it, so the
        caller raises ``TimeoutError``. Withdraws our cancel request whenever it was made."""
        if not self.fired:
            return False
        assert self.task is not None
        return self.task.uncancel() <= self.cancelling and exc_type is asyncio.CancelledError


class Timeout(TaskLimit):
    """``async with Timeout(seconds):`` — ``asyncio.timeout`` on the loop's :class:`Watchdog`: the body is
    cancelled between ``seconds`` and ``seconds + slack_for(seconds)`` after entry and the block raises
    ``TimeoutError``. Follows ``asyncio.Timeout``'s rules (:class:`TaskLimit`): a cancel request that was not
    ours (the task was already being cancelled, or someone else cancelled it too) propagates as
    ``CancelledError``. ``None``: no limit. :meth:`expired`: whether the limit ended the block."""

    __slots__ = ("_limit_s", "_dog")

    def __init__(self, limit_s: float | None) -> None:  # the task is the one that enters the block
        self.task = None
        self.cancelling = 0
        self.fired = False
        self._limit_s = limit_s
        self._dog: Watchdog | None = None

    def expired(self) -> bool:
        return self.fired

    async def __aenter__(self) -> Timeout:
        limit = self._limit_s
        if limit is not None:
            task = self.task = asyncio.current_task()
            if task is None:
                raise RuntimeError("Timeout should be used inside a task")
            self.cancelling = task.cancelling()
            dog = self._dog = watchdog()
            if limit < 0.0:
                limit = 0.0
            dog.arm_at(self, dog.loop.time() + limit, slack_for(limit))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        dog = self._dog
        if dog is None:
            return
        dog.live.pop(self, None)
        self._dog = None
        if self.timed_out(exc_type):
            raise TimeoutError from exc
