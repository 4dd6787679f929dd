"""wait_event keeps a cancellation that arrives in the loop turn the event is set (asyncio.wait_for on
Python 3.11 swallows it: a polling loop then never stops — gh-86296; swapping wait_for back in fails this)."""
from __future__ import annotations

import asyncio

from resilience.waits import wait_event


async def test_a_cancel_arriving_as_the_event_is_set_stops_a_polling_loop():
    event = asyncio.Event()
    rounds = 0

    async def poll_forever() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            await wait_event(event, 10.0)
            event.clear()

    task = asyncio.create_task(poll_forever())
    await asyncio.sleep(0)  # waiting on the event
    event.set()
    task.cancel()  # same loop turn: the wait's inner future completes as the cancel lands
    done, _ = await asyncio.wait({task}, timeout=2.0)
    assert done and task.cancelled() and rounds == 1


async def test_wait_event_says_whether_the_event_came():
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.0) is True
