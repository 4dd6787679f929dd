"""Two priorities for calls to a dependency: interactive (the default) and background.

Background work (batches, re-indexing, anything nobody is waiting on) marks its task with
:func:`background_priority`; every :class:`PriorityBulkhead` it meets then treats it as second
class:

* it may hold at most ``background_share`` of the bulkhead's slots (at least one);
* it is admitted only when no interactive caller is waiting, and a freed slot goes to the oldest
  interactive waiter first;
* it waits for a slot as long as its caller allows (the attempt's time) instead of being shed after
  the short interactive ``max_wait_s``: background work queues, interactive work fails fast.

The mark is a context variable, so it follows the task (and tasks it creates) through the guard
without any argument threading. :class:`IdleGate` covers what no bulkhead sees (CPU, an in-process
model on one thread): background work starts only while the foreground is quiet, with aging so it
never starves. Knows nothing about what the background work is.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from contextvars import ContextVar
from typing import Any, Callable, Iterator

from resilience.bulkhead import Bulkhead, BulkheadFull

_background: ContextVar[bool] = ContextVar("resilience_background_priority", default=False)


@contextlib.contextmanager
def background_priority() -> Iterator[None]:
    """Run the body (and tasks it creates) at background priority."""
    token = _background.set(True)
    try:
        yield
    finally:
        _background.reset(token)


def is_background() -> bool:
    return _background.get()


class PriorityBulkhead(Bulkhead):
    """A :class:`Bulkhead` where background callers get a bounded share and yield to interactive ones.

    With no background caller it behaves exactly like :class:`Bulkhead`.
    """

    def __init__(self, max_concurrent: int, max_wait_s: float, *, background_share: float = 0.25,
                 max_queue: int | None = None, name: str = "") -> None:
        super().__init__(max_concurrent, max_wait_s, max_queue=max_queue, name=name)
        self.background_share = background_share
        self.background_in_flight = 0
        self._bg_waiters: deque[asyncio.Future[None]] = deque()

    @property
    def background_cap(self) -> int:
        return max(1, int(self.max_concurrent * self.background_share))

    def _background_admits(self) -> bool:
        return (self.in_flight < self.max_concurrent and self.background_in_flight < self.background_cap
                and self.waiting == 0)

    def try_acquire(self) -> bool:
        if not _background.get():
            return super().try_acquire()
        if self._background_admits() and not any(not w.done() for w in self._bg_waiters):
            self.in_flight += 1
            self.background_in_flight += 1
            self.admitted += 1
            return True
        return False

    async def acquire(self, max_wait_s: float | None = None) -> None:
        if not is_background():
            return await super().acquire(max_wait_s)
        if self.try_acquire():
            return
        wait = self.max_wait_s if max_wait_s is None else max_wait_s
        if wait <= 0:
            self.shed += 1
            raise BulkheadFull(self.name, 0.0)
        await self._wait_in(self._bg_waiters, wait)  # on a late cancel, release() runs in our context

    def release(self) -> None:
        if _background.get():
            self.background_in_flight -= 1
        elif not self._waiters and not self._bg_waiters:
            self.in_flight -= 1  # nobody to hand the slot to: what the general path below ends with
            return
        super().release()  # an interactive waiter, if any, takes the slot
        self._wake_background()

    def _wake_background(self) -> None:
        while self._bg_waiters and self._background_admits():
            fut = self._bg_waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                self.background_in_flight += 1
                fut.set_result(None)

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "background_in_flight": self.background_in_flight,
                "background_waiting": sum(1 for w in self._bg_waiters if not w.done()),
                "background_cap": self.background_cap}


class IdleGate:
    """Lets background work *start* only while the foreground is quiet, for resources no bulkhead
    sees (the process's CPU, an in-process model on one thread).

    ``busy()`` returns the foreground work in progress (e.g. interactive requests in flight);
    :meth:`wait_turn` returns once it is below ``idle_below``. Aging keeps background work from
    starving under constant foreground load: after ``max_wait_s`` it starts anyway, so a saturated
    process still runs about one background item per ``max_wait_s`` per waiting worker.
    Non-preemptive: work already started runs to its end.
    """

    def __init__(self, busy: Callable[[], int], *, idle_below: int = 1, max_wait_s: float = 2.0,
                 poll_s: float = 0.01, clock: Callable[[], float] = time.monotonic) -> None:
        self.busy = busy
        self.idle_below = idle_below
        self.max_wait_s = max_wait_s
        self.poll_s = poll_s
        self.clock = clock
        self.turns = {"idle": 0, "aged": 0}

    async def wait_turn(self) -> str:
        """``"idle"`` (the foreground was quiet) or ``"aged"`` (waited ``max_wait_s``)."""
        start = self.clock()
        while self.busy() >= self.idle_below:
            if self.clock() - start >= self.max_wait_s:
                self.turns["aged"] += 1
                return "aged"
            await asyncio.sleep(self.poll_s)
        self.turns["idle"] += 1
        return "idle"
