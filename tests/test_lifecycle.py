"""Bounded teardown (gateway/lifecycle.py): a task or a close that ignores its cancellation is logged with
where it waits and left behind; the gateway's close still ends, and the job worker stops before the
dependencies it uses are closed."""
from __future__ import annotations

import asyncio
import logging

from aiohttp.test_utils import TestClient, TestServer

from gateway import lifecycle
from gateway.app import create_app
from gateway.jobs.routes import JOBS
from gateway.state import STATE
from tests.conftest import close_or_explain, make_settings, state_of


async def _deaf(release: asyncio.Event) -> None:
    """Swallows every cancellation until ``release`` is set (the bug the bound is for)."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            pass


async def test_stop_tasks_leaves_a_deaf_task_behind_and_says_where_it_waits(caplog):
    release = asyncio.Event()
    deaf = asyncio.create_task(_deaf(release), name="deaf-one")
    polite = asyncio.create_task(asyncio.sleep(60), name="polite-one")
    await asyncio.sleep(0)  # both are waiting (a task cancelled before it starts never runs)
    before = lifecycle.overruns
    with caplog.at_level(logging.ERROR, logger="rag_sidecar.shutdown"):
        assert await lifecycle.stop_tasks("test tasks", [deaf, polite], timeout_s=0.2) == 1
    assert polite.cancelled() and not deaf.done()
    assert lifecycle.overruns == before + 1
    record = lifecycle.stuck[-1]
    assert record["step"] == "test tasks" and [t["name"] for t in record["tasks"]] == ["deaf-one"]
    assert "_deaf (test_lifecycle.py:" in record["tasks"][0]["at"]
    assert any(getattr(r, "event", None) == "shutdown_stuck" for r in caplog.records)
    release.set()
    await deaf


async def test_bounded_gives_up_on_a_step_that_ignores_cancellation_and_survives_one_that_raises(caplog):
    release = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="rag_sidecar.shutdown"):
        assert await lifecycle.bounded("deaf close", _deaf(release), timeout_s=0.2) is False

        async def boom() -> None:
            raise OSError("disk gone")

        assert await lifecycle.bounded("failing close", boom()) is True  # logged, not raised
    assert lifecycle.stuck[-1]["step"] == "deaf close"
    failed = [r for r in caplog.records if getattr(r, "event", None) == "shutdown_step_failed"]
    assert failed and failed[0].step == "failing close" and "disk gone" in failed[0].error
    release.set()


async def test_a_background_task_deaf_to_cancellation_does_not_hang_the_gateway_close(gateway, monkeypatch):
    """Without the bound, ``_on_cleanup`` waited for every background task forever (a CI run hung here)."""
    monkeypatch.setattr(lifecycle, "STEP_S", 0.3)
    release = asyncio.Event()
    state = state_of(gateway)
    state.tasks.append(asyncio.create_task(_deaf(release), name="deaf-background"))
    await asyncio.sleep(0)
    before = lifecycle.overruns
    async with asyncio.timeout(30):
        await gateway.close()
    assert lifecycle.overruns == before + 1
    assert lifecycle.stuck[-1]["step"] == "background tasks"
    assert [t["name"] for t in lifecycle.stuck[-1]["tasks"]] == ["deaf-background"]
    assert state.embedder is None and state.kb is None  # the steps after it ran
    release.set()


async def test_the_job_worker_has_stopped_before_the_app_closes_its_dependencies(data_dir):
    """on_shutdown stops the worker; on_cleanup (embedder, store, LLM) comes after. Registered the other way,
    a running query met a closed embedder and was recorded as failed instead of given back."""
    app = create_app(make_settings(data_dir), configure_logging=False)
    seen: dict[str, object] = {}

    async def first_cleanup_step(app) -> None:  # type: ignore[no-untyped-def]
        worker = app[JOBS].worker
        seen["worker_tasks_done"] = all(t.done() for t in worker._tasks)
        seen["embedder_open"] = app[STATE].embedder is not None

    app.on_cleanup.insert(0, first_cleanup_step)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    await asyncio.wait_for(state_of(client).ready.wait(), timeout=120)
    assert not any(t.done() for t in app[JOBS].worker._tasks)  # running while serving
    await close_or_explain(client)
    assert seen == {"worker_tasks_done": True, "embedder_open": True}
