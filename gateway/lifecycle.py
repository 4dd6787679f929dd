"""Bounded teardown: every step of a shutdown ends, even when what it waits for does not.

A process that hangs in cleanup is worse than one that leaves a task behind: the orchestrator kills it
after its own grace (SIGKILL: nothing flushed, nothing logged), and a test run waits for its timeout.
So each step gets ``STEP_S``; a step or task that overruns is logged (``shutdown_stuck``, with where
each stuck task is waiting) and left behind, and the shutdown goes on.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import Any, Awaitable, Iterable

log = logging.getLogger("rag_sidecar.shutdown")
STEP_S = 10.0  # per step: a close or a set of cancelled tasks
# The last steps that overran, process-wide (what was logged): the test suite fails on any new one.
stuck: deque[dict[str, Any]] = deque(maxlen=100)
overruns = 0  # how many ever (stuck holds the last 100)


def where(task: asyncio.Future[Any]) -> str:
    """``outer (file:line) > ... > innermost`` for a task's current await chain (no locals)."""
    if not isinstance(task, asyncio.Task):
        return "?"
    frames = task.get_stack(limit=12)
    return " > ".join(f"{f.f_code.co_name} ({os.path.basename(f.f_code.co_filename)}:{f.f_lineno})"
                      for f in frames) or "?"


def _stuck(step: str, pending: Iterable[asyncio.Future[Any]], timeout_s: float) -> None:
    record = {"step": step, "timeout_s": timeout_s,
              "tasks": [{"name": t.get_name() if isinstance(t, asyncio.Task) else "?", "at": where(t)}
                        for t in pending]}
    global overruns
    stuck.append(record)
    overruns += 1
    log.error("shutdown step did not finish in time; left behind", extra={"event": "shutdown_stuck", **record})


async def stop_tasks(step: str, tasks: Iterable[asyncio.Task[Any]], timeout_s: float | None = None) -> int:
    """Cancel ``tasks`` and wait at most ``timeout_s`` for them to end. Returns how many did not (logged,
    with where each one waits: a task that swallows its cancellation is a bug worth finding)."""
    timeout_s = STEP_S if timeout_s is None else timeout_s
    tasks = list(tasks)
    live = [t for t in tasks if not t.done()]
    for t in live:
        t.cancel()
    pending: set[asyncio.Task[Any]] = set()
    if live:
        _, pending = await asyncio.wait(live, timeout=timeout_s)
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved (as gather did): a task that failed earlier is not "never retrieved" noise
    if pending:
        _stuck(step, pending, timeout_s)
    return len(pending)


async def bounded(step: str, aw: Awaitable[Any], timeout_s: float | None = None) -> bool:
    """Run one teardown step for at most ``timeout_s``. False (logged) when it overran; it is then
    cancelled and not waited for — a step that ignores cancellation cannot hold the shutdown."""
    timeout_s = STEP_S if timeout_s is None else timeout_s
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        _stuck(step, [task], timeout_s)
        task.cancel()
        return False
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("shutdown step failed", extra={"event": "shutdown_step_failed", "step": step,
                                                   "error": repr(exc)})
    return True
