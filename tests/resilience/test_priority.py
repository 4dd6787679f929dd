"""PriorityBulkhead: background work gets a bounded share of a dependency and yields to interactive calls."""
from __future__ import annotations

import asyncio

import pytest

from resilience import BulkheadFull, PriorityBulkhead, background_priority


async def hold(bulkhead: PriorityBulkhead, release: asyncio.Event, order: list[str], name: str,
               background: bool = False, wait_s: float | None = None) -> None:
    if background:
        with background_priority():
            async with bulkhead.slot(wait_s):
                order.append(name)
                await release.wait()
    else:
        async with bulkhead.slot(wait_s):
            order.append(name)
            await release.wait()


async def test_background_holds_at_most_its_share_and_interactive_takes_the_rest():
    b = PriorityBulkhead(max_concurrent=4, max_wait_s=0.05, background_share=0.5)
    release, order = asyncio.Event(), []
    bg = [asyncio.create_task(hold(b, release, order, f"bg{i}", True, 5.0)) for i in range(4)]
    await asyncio.sleep(0)
    assert b.background_in_flight == 2 and b.in_flight == 2  # two wait although slots are free
    fg = [asyncio.create_task(hold(b, release, order, f"fg{i}")) for i in range(2)]
    await asyncio.sleep(0)
    assert b.in_flight == 4 and sorted(order) == ["bg0", "bg1", "fg0", "fg1"]
    release.set()
    await asyncio.gather(*bg, *fg)
    assert b.in_flight == 0 and b.background_in_flight == 0


async def test_a_freed_slot_goes_to_the_waiting_interactive_call_first():
    b = PriorityBulkhead(max_concurrent=1, max_wait_s=1.0, background_share=1.0)
    first, rest, order = asyncio.Event(), asyncio.Event(), []
    holder = asyncio.create_task(hold(b, first, order, "holder"))
    await asyncio.sleep(0)
    waiting_bg = asyncio.create_task(hold(b, rest, order, "bg", True, 5.0))
    await asyncio.sleep(0)
    waiting_fg = asyncio.create_task(hold(b, rest, order, "fg"))
    await asyncio.sleep(0)
    first.set()  # the background call waited longer, the interactive one still goes first
    await holder
    await asyncio.sleep(0)
    assert order == ["holder", "fg"]
    rest.set()
    await asyncio.gather(waiting_bg, waiting_fg)
    assert order == ["holder", "fg", "bg"] and b.in_flight == 0 and b.background_in_flight == 0


async def test_background_queues_where_interactive_is_shed():
    b = PriorityBulkhead(max_concurrent=1, max_wait_s=0.01, background_share=1.0)
    release, order = asyncio.Event(), []
    holder = asyncio.create_task(hold(b, release, order, "holder"))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFull):
        await b.acquire(max_wait_s=1.0)  # interactive: capped at max_wait_s
    bg = asyncio.create_task(hold(b, release, order, "bg", True, 1.0))  # background: waits its own time
    await asyncio.sleep(0.05)
    assert not bg.done()
    release.set()
    await asyncio.gather(holder, bg)
    assert order == ["holder", "bg"]


async def test_a_cancelled_background_waiter_leaks_no_slot():
    b = PriorityBulkhead(max_concurrent=1, max_wait_s=0.01, background_share=1.0)
    release, order = asyncio.Event(), []
    holder = asyncio.create_task(hold(b, release, order, "holder"))
    await asyncio.sleep(0)
    bg = asyncio.create_task(hold(b, release, order, "bg", True, 5.0))
    await asyncio.sleep(0)
    bg.cancel()
    release.set()
    await holder
    with pytest.raises(asyncio.CancelledError):
        await bg
    assert b.in_flight == 0 and b.background_in_flight == 0


async def test_idle_gate_waits_for_a_quiet_moment_and_ages_instead_of_starving():
    from resilience import IdleGate

    busy = {"n": 2}
    ticks = iter(range(10**6))
    gate = IdleGate(lambda: busy["n"], max_wait_s=50, poll_s=0, clock=lambda: float(next(ticks)))
    waiting = asyncio.create_task(gate.wait_turn())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()  # the foreground is busy: background does not start
    busy["n"] = 0
    assert await waiting == "idle"
    busy["n"] = 1  # busy for good: after max_wait_s (50 ticks of the injected clock) it starts anyway
    assert await gate.wait_turn() == "aged"
    assert gate.turns == {"idle": 1, "aged": 1}
