"""Waiting on an event with a timeout, without losing a cancellation.

``asyncio.wait_for`` on Python 3.11 returns the result when the awaited thing finishes in the same loop
turn as the task is cancelled: the cancellation is swallowed (cpython gh-86296, fixed in 3.12). A loop
that waits with it (``while True: wait_for(event.wait(), poll)``) then never stops when cancelled — a CI
run hung on the job worker's claim loop that way. ``asyncio.timeout`` keeps the cancellation.
"""
from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """True once ``event`` is set, False after ``timeout_s``; a cancellation always propagates."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(max(0.0, timeout_s)):
            await event.wait()
    except TimeoutError:
        return False
    return True
