"""Coarse limits for one event loop with one timer: arming a limit is a dict insert, disarming a pop.

Long limits that almost never fire (a stream's idle gap, a client that stops reading, a response header wait:
tens of seconds, on every request) cost a ``TimerHandle`` pushed on the loop's heap and cancelled when armed
with ``loop.call_later``/``asyncio.timeout``. Like nginx's and Envoy's idle timers, :class:`Watchdog` keeps them
in a dict and one loop timer armed for the earliest *latest* firing time: a limit of ``L`` seconds fires
between ``L`` and ``L + slack`` after it was armed, ``slack = min(L / 10, 1 s)`` (a 0.2 s test limit fires
within 0.22 s; a 60 s limit within 61 s). A limit never fires before its time. The timer is re-armed only when a
new limit must fire before it, so a stream of requests with the same limits arms no timer of its own; the
timer stops once nothing is registered (after at most one more tick).

:func:`watchdog` gives the running loop's; :class:`Timeout` is ``asyncio.timeout`` on it. Nothing here knows
about HTTP.
"""
from __future__ import annotations

import asyncio
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
    """The coarse limits of one event loop. Use from the loop's thread only."""

    __slots__ = ("loop", "live", "armed", "_handle", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.live: dict[Expiring, tuple[float, float]] = {}  # entry -> (due, latest), loop time
        self.armed = _INF  # when the timer fires (inf: not running)
        self._handle: asyncio.TimerHandle | None = None

    def arm_at(self, item: Expiring, due: float, slack_s: float) -> None:
        """Call ``item.expire()`` between loop time ``due`` and ``due + slack_s`` unless :meth:`disarm`\\ ed
        first. Re-arming an armed item replaces its limit."""
        latest = due + slack_s
        self.live[item] = (due, latest)
        if latest < self.armed:
            self._arm(latest)

    def arm(self, item: Expiring, limit_s: float) -> None:
        """Call ``item.expire()`` ``limit_s`` seconds from now (late by at most :func:`slack_for`)."""
        self.arm_at(item, self.loop.time() + limit_s, slack_for(limit_s))

    def disarm(self, item: Expiring) -> None:
        """Forget ``item`` (no-op if it is not armed). The timer is left running: it stops at its next tick
        if nothing is registered by then, so a loop that arms and disarms per request creates no timer."""
        self.live.pop(item, None)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.loop.call_at(when, self._tick)
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


class Timeout:
    """``async with Timeout(seconds):`` — ``asyncio.timeout`` on the loop's :class:`Watchdog`: the body is
    cancelled between ``seconds`` and ``seconds + slack_for(seconds)`` after entry and the block raises
    ``TimeoutError``. Follows ``asyncio.Timeout``'s rules: a cancel request that was not ours (the task
    was already being cancelled, or someone else cancelled it too) propagates as ``CancelledError``; ours is
    withdrawn with ``uncancel``. ``None``: no limit. :meth:`expired`: whether the limit ended the block."""

    __slots__ = ("_limit_s", "_dog", "_task", "_cancelling", "_expired")

    def __init__(self, limit_s: float | None) -> None:
        self._limit_s = limit_s
        self._dog: Watchdog | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._expired = False

    def expired(self) -> bool:
        return self._expired

    async def __aenter__(self) -> Timeout:
        limit = self._limit_s
        if limit is not None:
            task = self._task = asyncio.current_task()
            if task is None:
                raise RuntimeError("Timeout should be used inside a task")
            self._cancelling = task.cancelling()
            dog = self._dog = watchdog()
            if limit < 0.0:
                limit = 0.0
            dog.arm_at(self, dog.loop.time() + limit, slack_for(limit))
        return self

    def expire(self) -> None:
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        dog = self._dog
        if dog is None:
            return
        dog.live.pop(self, None)
        self._dog = None
        if self._expired:
            assert self._task is not None
            # asyncio.Timeout.__aexit__: withdraw our request; TimeoutError only if no one else asked to cancel.
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
