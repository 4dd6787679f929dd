"""Bulkhead: bounded concurrency, bounded wait, FIFO hand-off, no leaked slots."""
from __future__ import annotations

import asyncio
import time

import pytest

from resilience import Bulkhead, BulkheadFull


async def hold(bulkhead: Bulkhead, release: asyncio.Event, order: list[int], i: int, wait_s=None):
    async with bulkhead.slot(wait_s):
        order.append(i)
        await release.wait()


async def test_admits_max_concurrent_and_sheds_past_the_wait():
    bulkhead = Bulkhead(max_concurrent=3, max_wait_s=0.05)
    release, order = asyncio.Event(), []
    holders = [asyncio.create_task(hold(bulkhead, release, order, i)) for i in range(3)]
    await asyncio.sleep(0)
    assert bulkhead.snapshot()["in_flight"] == 3
    t0 = time.monotonic()
    with pytest.raises(BulkheadFull) as err:
        await bulkhead.acquire()
    assert 0.04 <= time.monotonic() - t0 < 0.15
    assert err.value.waited_s >= 0.04
    release.set()
    await asyncio.gather(*holders)
    assert bulkhead.snapshot() == {"max_concurrent": 3, "in_flight": 0, "waiting": 0, "shed": 1,
                                   "admitted": 3, "max_wait_s": 0.05}


async def test_zero_wait_sheds_at_once_and_full_queue_sheds_at_once():
    bulkhead = Bulkhead(max_concurrent=1, max_wait_s=1.0, max_queue=1)
    await bulkhead.acquire()
    with pytest.raises(BulkheadFull):
        await bulkhead.acquire(max_wait_s=0)
    waiter = asyncio.create_task(bulkhead.acquire())
    await asyncio.sleep(0)
    assert bulkhead.waiting == 1
    t0 = time.monotonic()
    with pytest.raises(BulkheadFull):
        await bulkhead.acquire()  # queue of 1 is full
    assert time.monotonic() - t0 < 0.05
    bulkhead.release()
    await waiter  # the queued caller got the slot
    assert bulkhead.in_flight == 1
    bulkhead.release()
    assert bulkhead.in_flight == 0


async def test_slots_go_to_waiters_first_in_first_out():
    bulkhead = Bulkhead(max_concurrent=1, max_wait_s=1.0)
    release, order = asyncio.Event(), []
    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(hold(bulkhead, release, order, i)))
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
    assert bulkhead.in_flight == 0


async def test_a_cancelled_waiter_leaks_no_slot():
    bulkhead = Bulkhead(max_concurrent=1, max_wait_s=1.0)
    await bulkhead.acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await asyncio.sleep(0)
    bulkhead.release()  # hands the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.in_flight == 0
    await asyncio.wait_for(bulkhead.acquire(max_wait_s=0), 0.1)
