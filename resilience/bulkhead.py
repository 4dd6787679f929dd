"""Bulkhead: at most ``max_concurrent`` calls in flight, a bounded FIFO wait, and fast shedding."""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, AsyncIterator


class BulkheadFull(Exception):
    """No slot within the allowed wait (or the queue is full). The guard maps it to ``shed``."""

    def __init__(self, name: str, waited_s: float) -> None:
        self.name = name
        self.waited_s = waited_s
        super().__init__(f"bulkhead {name!r} full")


class Bulkhead:
    """A FIFO semaphore whose waiters give up after ``max_wait_s`` seconds.

    Slots are handed directly to the oldest waiter on release, so a late arrival can't overtake
    the queue. (Hand-rolled rather than ``wait_for(sem.acquire())``: on Python 3.11 a timeout
    racing the acquisition can leak the slot.)
    """

    def __init__(self, max_concurrent: int, max_wait_s: float, *, max_queue: int | None = None,
                 name: str = "") -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.in_flight = 0
        self.shed = 0
        self.admitted = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self, max_wait_s: float | None = None) -> None:
        """Take a slot, waiting at most ``max_wait_s`` (default: the configured wait) seconds.
        Raises :class:`BulkheadFull` instead of waiting longer."""
        if self.try_acquire():
            return
        wait = self.max_wait_s if max_wait_s is None else min(max_wait_s, self.max_wait_s)
        if wait <= 0 or (self.max_queue is not None and self.waiting >= self.max_queue):
            self.shed += 1
            raise BulkheadFull(self.name, 0.0)
        await self._wait_in(self._waiters, wait)

    def try_acquire(self) -> bool:
        """Take a free slot now if :meth:`acquire` would without waiting (none taken if False): lets a
        caller skip the coroutine in the common uncontended case."""
        if self.in_flight < self.max_concurrent and not self._waiters:
            self.in_flight += 1
            self.admitted += 1
            return True
        return False

    async def _wait_in(self, queue: deque[asyncio.Future[None]], wait: float) -> None:
        """Queue a waiter in ``queue`` until :meth:`release` hands it a slot; :class:`BulkheadFull`
        after ``wait`` seconds. A slot handed over as the caller is cancelled is passed on, never leaked."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        queue.append(fut)
        start = loop.time()
        try:
            async with asyncio.timeout(wait):
                await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                self.admitted += 1  # the slot was handed over just as the wait ran out
                return
            fut.cancel()
            self.shed += 1
            raise BulkheadFull(self.name, loop.time() - start) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot but cancelled before using it: pass it on
            else:
                fut.cancel()
            raise
        finally:
            with contextlib.suppress(ValueError):
                queue.remove(fut)
        self.admitted += 1

    def release(self) -> None:
        """Give the slot back (to the oldest live waiter if any)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # in_flight is unchanged: the slot changes hands
                return
        self.in_flight -= 1

    @contextlib.asynccontextmanager
    async def slot(self, max_wait_s: float | None = None) -> AsyncIterator[None]:
        """``async with bulkhead.slot(): ...`` — acquire, run, release."""
        await self.acquire(max_wait_s)
        try:
            yield
        finally:
            self.release()

    def snapshot(self) -> dict[str, Any]:
        return {"max_concurrent": self.max_concurrent, "in_flight": self.in_flight, "waiting": self.waiting,
                "shed": self.shed, "admitted": self.admitted, "max_wait_s": self.max_wait_s}
