"""The queue backends over real storage (a SQLite file, a loopback redis-server): a claimed query whose
worker died is handed out again after the visibility timeout, and the duplicate execution never adds
or changes a result; retries wait out their delay; two replicas share one Redis batch."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.jobs.redis_store import RedisJobStore
from gateway.jobs.sqlite_store import SQLiteJobStore
from gateway.jobs.store import Job, QuotaExceeded
from tests.conftest import make_settings, state_of
from tests.jobs.test_jobs_api import TOPICS, all_results, wait_finished


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def store_factory(request, tmp_path: Path):
    stores = []
    clock = Clock()

    async def make(visibility_timeout_s: float = 30.0):
        if request.param == "sqlite":
            store = SQLiteJobStore(tmp_path / "jobs.sqlite3", visibility_timeout_s=visibility_timeout_s,
                                   result_ttl_s=60, clock=clock)
        else:
            url = request.getfixturevalue("redis_url")
            store = RedisJobStore(url, prefix="t", visibility_timeout_s=visibility_timeout_s, result_ttl_s=60,
                                  clock=clock)
        await store.open()
        stores.append(store)
        return store

    make.clock = clock
    make.backend = request.param
    yield make
    for s in stores:
        await s.close()


async def test_a_dead_workers_item_is_reclaimed_and_its_late_result_is_not_duplicated(store_factory):
    # Redis measures a pending entry's idle time on its own clock: a short real timeout there.
    redis = store_factory.backend == "redis"
    a = await store_factory(0.3 if redis else 30.0)
    await a.create(Job(id="j1", client="c", total=2), [{"query": "q0", "top_k": 1}, {"query": "q1", "top_k": 1}],
                   max_pending_per_client=10)
    first = await a.claim(2)
    assert sorted(c.index for c in first) == [0, 1] and {c.attempts for c in first} == {1}
    assert await a.claim(2) == []  # leased: nobody else gets them
    # Worker A records item 0, then "dies" holding item 1; a second worker looks after the lease ran out.
    assert await a.complete(first[0], "done", {"result": {"answer": "a0"}}) == (True, False)
    b = await store_factory(0.3) if redis else a
    assert await b.claim(2) == []
    store_factory.clock.now += 31
    if redis:
        await asyncio.sleep(0.35)  # the visibility timeout itself is what is under test
    again = await b.claim(2)
    assert [(c.index, c.attempts) for c in again] == [(1, 2)]
    assert await b.complete(again[0], "done", {"result": {"answer": "second"}}) == (True, True)
    # The first worker was only slow: its late write is discarded, the job counts each item once.
    late = next(c for c in first if c.index == 1)
    assert await a.complete(late, "done", {"result": {"answer": "first"}}) == (False, False)
    job = await a.get("j1")
    assert job.status == "completed" and (job.done, job.failed, job.pending) == (2, 0, 0)
    items = await a.items("j1", 0, 10)
    assert [i["result"]["answer"] for i in items] == ["a0", "second"]


async def test_retry_waits_for_its_delay_and_quota_counts_unfinished_items(store_factory):
    s = await store_factory()
    await s.create(Job(id="j2", client="c", total=1), [{"query": "q", "top_k": 1}], max_pending_per_client=2)
    with pytest.raises(QuotaExceeded):
        await s.create(Job(id="j3", client="c", total=2), [{"query": "q", "top_k": 1}] * 2, max_pending_per_client=2)
    await s.create(Job(id="j4", client="other", total=2), [{"query": "q", "top_k": 1}] * 2, max_pending_per_client=2)
    claim = next(c for c in await s.claim(3) if c.job_id == "j2")
    await s.retry(claim, 5.0, {"type": "degraded"})
    assert [c for c in await s.claim(3) if c.job_id == "j2"] == []  # not due yet
    store_factory.clock.now += 6
    again = await s.claim(3)
    assert [(c.job_id, c.attempts) for c in again] == [("j2", 2)]
    await s.complete(again[0], "failed", {"error": {"type": "unavailable"}})
    # j2 finished: the client has room again.
    await s.create(Job(id="j5", client="c", total=2), [{"query": "q", "top_k": 1}] * 2, max_pending_per_client=2)


async def test_cancel_drops_queued_items_and_a_running_ones_result(store_factory):
    s = await store_factory()
    await s.create(Job(id="j6", client="c", total=3), [{"query": "q", "top_k": 1}] * 3, max_pending_per_client=9)
    running = await s.claim(1)
    job = await s.cancel("j6")
    assert job.status == "cancelled" and job.cancelled == 3
    assert await s.complete(running[0], "done", {"result": {}}) == (False, False)
    assert await s.claim(5) == []
    assert {i["status"] for i in await s.items("j6", 0, 10)} == {"cancelled"}


@pytest.mark.redis
async def test_two_replicas_share_one_redis_batch(gateway_factory, data_dir, tmp_path, redis_url):
    import shutil

    other_dir = tmp_path / "replica-b"
    shutil.copytree(data_dir, other_dir)
    over = {"jobs.backend": "redis", "jobs.redis_url": redis_url, "jobs.concurrency": 4,
            "jobs.poll_interval_s": 0.05}
    a = await gateway_factory(make_settings(data_dir, **over))
    b = await gateway_factory(make_settings(other_dir, **over))
    for gw in (a, b):
        state_of(gw).guards["vector_db"].breaker.force_open()  # keyword path: fast, deterministic
    queries = [{"query": f"{TOPICS[i % 3][0]} #{i}", "top_k": 1} for i in range(300)]
    job = await (await a.post("/v1/jobs", json={"queries": queries})).json()
    done = await wait_finished(b, job["id"])  # any replica answers for the shared queue
    assert done["progress"]["done"] == 300
    results = await all_results(a, job["id"], page=1000)
    assert [r["index"] for r in results] == list(range(300))
    assert all(r["result"]["sources"][0]["source"] == TOPICS[r["index"] % 3][1] for r in results)
    executed = [gw.server.app[__import__("gateway.jobs.routes", fromlist=["JOBS"]).JOBS].worker.executed
                for gw in (a, b)]
    assert sum(executed) >= 300 and min(executed) > 0, executed


@pytest.mark.redis
async def test_a_stopping_replica_gives_its_running_query_back_at_once(gateway_factory, data_dir, tmp_path, redis_url):
    """Rolling restart: the query a stopping replica was running is not parked for the visibility timeout."""
    import shutil

    from gateway.jobs.routes import JOBS
    from gateway.upstreams.faultinject import DelayFault, FaultSpec

    other_dir = tmp_path / "replica-b"
    shutil.copytree(data_dir, other_dir)
    over = {"jobs.backend": "redis", "jobs.redis_url": redis_url, "jobs.poll_interval_s": 0.05,
            "jobs.visibility_timeout_s": 300, "jobs.concurrency": 1}
    a = await gateway_factory(make_settings(data_dir, **over, **{"chaos.allow_fault_injection": True}))
    state_of(a).faults.set("embedder", FaultSpec(delay=DelayFault(fixed_delay_s=1.5)))
    job = await (await a.post("/v1/jobs", json={"query": "green tea"})).json()
    worker = a.server.app[JOBS].worker
    async with asyncio.timeout(10):
        while not worker._running:  # the query is in flight on replica A
            await asyncio.sleep(0.01)
    await a.close()  # graceful stop mid-query
    b = await gateway_factory(make_settings(other_dir, **over))
    done = await wait_finished(b, job["id"], timeout_s=20)  # far below the 300 s visibility timeout
    assert done["progress"]["done"] == 1
    item = (await (await b.get(f"/v1/jobs/{job['id']}")).json())["results"][0]
    assert item["attempts"] == 2 and item["result"]["sources"][0]["source"] == "tea.md"


@pytest.mark.redis
async def test_redis_down_is_a_labelled_503_and_interactive_queries_still_answer(gateway_factory, data_dir,
                                                                                 redis_server):
    client = await gateway_factory(make_settings(data_dir, **{"jobs.backend": "redis",
                                                              "jobs.redis_url": redis_server.url}))
    redis_server.stop()
    resp = await client.post("/v1/jobs", json={"query": "green tea"})
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert (await resp.json())["error"]["type"] == "queue_unavailable"
    assert (await client.get("/v1/jobs/abc")).status == 503
    assert (await client.post("/v1/query", json={"query": "green tea"})).status == 200


async def test_finished_jobs_are_deleted_after_their_ttl(store_factory):
    s = await store_factory()
    await s.create(Job(id="j7", client="c", total=1), [{"query": "q", "top_k": 1}], max_pending_per_client=9)
    await s.create(Job(id="j8", client="c", total=1), [{"query": "q", "top_k": 1}], max_pending_per_client=9)
    claim = next(c for c in await s.claim(2) if c.job_id == "j7")
    assert await s.complete(claim, "done", {"result": {"answer": "a"}}) == (True, True)
    if store_factory.backend == "redis":  # Redis deletes on its own clock: every key of the job has the TTL
        keys = [k async for k in s.r.scan_iter(match="t:*{j7}")]
        ttls = [await s.r.ttl(k) for k in keys]
        assert len(keys) >= 4 and all(0 < t <= 60 for t in ttls), ttls
        assert await s.r.ttl(s._keys("j8")["job"]) == -1  # unfinished: kept
        return
    store_factory.clock.now += 59
    assert await s.cleanup() == 0 and await s.get("j7") is not None
    store_factory.clock.now += 2
    assert await s.cleanup() == 1
    assert await s.get("j7") is None and await s.items("j7", 0, 10) == []
    assert await s.get("j8") is not None  # unfinished jobs never expire
