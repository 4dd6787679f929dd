"""/v1/jobs on the embedded stack: a 1,000-query batch, validation naming the item, paging, cancel,
per-client ownership and quotas, degraded-answer retries."""
from __future__ import annotations

import asyncio

import pytest

from gateway.jobs.routes import JOBS
from tests.conftest import make_settings, state_of

ALICE = {"Authorization": "Bearer key-alice-0001"}
BOB = {"Authorization": "Bearer key-bob-0002"}
KEYS = {"auth.api_keys": ["key-alice-0001", "key-bob-0002"]}
TOPICS = [("What temperature should water be for green tea", "tea.md"),
          ("Mauna Loa shield volcano basaltic lava", "volcanoes.html"),
          ("circuit breaker half-open trial calls", "breakers.md")]


async def wait_finished(client, job_id: str, *, timeout_s: float = 60, **headers) -> dict:
    """Poll the job until it is completed or cancelled (bounded)."""
    async with asyncio.timeout(timeout_s):
        while True:
            body = await (await client.get(f"/v1/jobs/{job_id}?limit=0", headers=headers)).json()
            if body["status"] in ("completed", "cancelled"):
                return body
            await asyncio.sleep(0.05)


async def all_results(client, job_id: str, page: int = 400) -> list[dict]:
    out, offset = [], 0
    while offset is not None:
        body = await (await client.get(f"/v1/jobs/{job_id}?offset={offset}&limit={page}")).json()
        out += body["results"]
        offset = body["next_offset"]
    return out


async def test_a_1000_query_batch_completes_with_each_answer_in_its_place(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"jobs.concurrency": 8}))
    # Keyword fallback (vector DB breaker held open): ~1 ms a query, so 1,000 run in seconds.
    state_of(client).guards["vector_db"].breaker.force_open()
    queries = [{"query": f"{TOPICS[i % 3][0]} #{i}", "top_k": 2} for i in range(1000)]
    resp = await client.post("/v1/jobs", json={"queries": queries})
    assert resp.status == 202
    job = await resp.json()
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}" and job["progress"]["total"] == 1000
    done = await wait_finished(client, job["id"])
    assert done["status"] == "completed"
    assert done["progress"] == {"total": 1000, "done": 1000, "failed": 0, "cancelled": 0, "pending": 0}
    results = await all_results(client, job["id"])
    assert [r["index"] for r in results] == list(range(1000))
    for r in results:
        contract = r["result"]
        assert r["status"] == "done" and contract["sources"][0]["retriever"] == "bm25"
        assert contract["degradations"] == [{"component": "vector_db", "reason": "breaker_open"}]
        assert contract["sources"][0]["source"] == TOPICS[r["index"] % 3][1], r
    # The same answer /v1/query gives for the same query (request id and timings aside).
    for i in (0, 1, 2, 500, 999):
        live = await (await client.post("/v1/query", json=queries[i])).json()
        stored = results[i]["result"]
        for key in ("answer", "mode", "degraded", "degradations", "sources", "kb_version"):
            assert stored[key] == live[key], (i, key)
        assert stored["request_id"] == f"job-{job['id']}-{i}"


async def test_single_query_job_and_paging(gateway):
    resp = await gateway.post("/v1/jobs", json={"query": "How long should green tea steep?", "top_k": 3})
    assert resp.status == 202
    job_id = (await resp.json())["id"]
    done = await wait_finished(gateway, job_id)
    assert done["progress"]["done"] == 1
    body = await (await gateway.get(f"/v1/jobs/{job_id}")).json()
    result = body["results"][0]["result"]
    assert result["mode"] == "extractive" and result["sources"][0]["source"] == "tea.md"
    assert len(result["sources"]) == 3 and body["next_offset"] is None


@pytest.mark.parametrize("body,status,field", [
    ({"queries": [{"query": "tea"}, {"query": "tea"}, {"query": "tea"}, {"query": "tea", "top_k": 0}]},
     422, "queries[3].top_k"),
    ({"queries": [{"query": "tea"}, {"qurey": "tea"}]}, 422, "queries[1].query"),
    ({"queries": [{"query": "tea", "top_kk": 2}]}, 422, "queries[0].top_kk"),
    ({"queries": [{"query": "  "}]}, 422, "queries[0].query"),
    ({"queries": [{"query": "tea", "stream": True}]}, 422, "queries[0].stream"),
    ({"queries": [{"query": "tea", "filters": {"year": float("inf")}}]}, 422, "queries[0].filters.year"),
    ({"queries": "tea"}, 422, "queries"),
    ({"queries": []}, 422, "queries"),
    ({"queries": [{"query": "tea"}], "top_k": 3}, 422, "top_k"),
    ({"query": "tea", "top_k": "3"}, 422, "top_k"),
    ({"query": "tea", "accept_degraded": "yes"}, 422, "accept_degraded"),
    ({"query": "tea", "webhook_url": "http://127.0.0.1:9/hook"}, 422, "webhook_url"),  # no secret configured
])
async def test_bad_items_are_4xx_naming_the_field_with_its_index(gateway, body, status, field):
    import json as _json

    resp = await gateway.post("/v1/jobs", data=_json.dumps(body), headers={"Content-Type": "application/json"})
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["field"] == field, err


async def test_too_many_queries_is_413_and_quota_is_429(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **KEYS, **{
        "jobs.max_items": 5, "jobs.max_pending_per_client": 6, "jobs.concurrency": 1}))
    resp = await client.post("/v1/jobs", json={"queries": [{"query": "tea"}] * 6}, headers=ALICE)
    assert resp.status == 413 and (await resp.json())["error"]["field"] == "queries"
    state_of(client).ready.clear()  # hold the worker: nothing finishes while we fill the quota
    assert (await client.post("/v1/jobs", json={"queries": [{"query": "tea"}] * 5}, headers=ALICE)).status == 202
    resp = await client.post("/v1/jobs", json={"queries": [{"query": "tea"}] * 2}, headers=ALICE)
    assert resp.status == 429 and resp.headers["Retry-After"]
    assert (await resp.json())["error"]["type"] == "quota_exceeded"
    # Another client (another API key) has its own quota.
    assert (await client.post("/v1/jobs", json={"query": "tea"}, headers=BOB)).status == 202


async def test_jobs_belong_to_their_client_and_cancel_stops_the_rest(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **KEYS, **{"jobs.concurrency": 1}))
    state_of(client).ready.clear()  # nothing runs: every item is still pending when we cancel
    job = await (await client.post("/v1/jobs", json={"queries": [{"query": "tea"}] * 4}, headers=ALICE)).json()
    assert (await client.get(f"/v1/jobs/{job['id']}", headers=BOB)).status == 404
    assert (await client.delete(f"/v1/jobs/{job['id']}", headers=BOB)).status == 404
    assert (await client.get(f"/v1/jobs/{job['id']}")).status == 401
    resp = await client.delete(f"/v1/jobs/{job['id']}", headers=ALICE)
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "cancelled" and body["progress"]["cancelled"] == 4
    state_of(client).ready.set()
    again = await (await client.delete(f"/v1/jobs/{job['id']}", headers=ALICE)).json()
    assert again["status"] == "cancelled" and again["progress"]["done"] == 0
    items = (await (await client.get(f"/v1/jobs/{job['id']}", headers=ALICE)).json())["results"]
    assert {i["status"] for i in items} == {"cancelled"}
    assert (await client.get("/v1/jobs/nope", headers=ALICE)).status == 404


async def test_idempotency_key_returns_the_same_job(gateway):
    headers = {"Idempotency-Key": "batch-1"}
    a = await (await gateway.post("/v1/jobs", json={"query": "tea"}, headers=headers)).json()
    b = await (await gateway.post("/v1/jobs", json={"query": "tea"}, headers=headers)).json()
    assert a["id"] == b["id"]


async def test_degraded_answers_are_retried_until_the_dependency_recovers_when_not_accepted(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"jobs.backoff_base_s": 0.05, "jobs.max_attempts": 50}))
    runtime = client.server.app[JOBS]
    breaker = state_of(client).guards["vector_db"].breaker
    breaker.force_open()
    strict = await (await client.post("/v1/jobs", json={"query": "green tea", "accept_degraded": False})).json()
    lenient = await (await client.post("/v1/jobs", json={"query": "green tea"})).json()
    await wait_finished(client, lenient["id"])
    async with asyncio.timeout(30):
        while runtime.worker.executed < 4:  # the strict job has been retried a few times
            await asyncio.sleep(0.02)
    assert (await (await client.get(f"/v1/jobs/{strict['id']}?limit=0")).json())["status"] == "running"
    breaker.reset()
    await wait_finished(client, strict["id"])
    got = (await (await client.get(f"/v1/jobs/{strict['id']}")).json())["results"][0]
    assert got["attempts"] >= 3 and got["result"]["degraded"] is False
    kept = (await (await client.get(f"/v1/jobs/{lenient['id']}")).json())["results"][0]
    assert kept["attempts"] == 1 and kept["result"]["degraded"] is True


async def test_retries_end_at_max_attempts_with_the_last_answer_labelled(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"jobs.backoff_base_s": 0.01, "jobs.max_attempts": 3,
                                                               "jobs.accept_degraded": False}))
    state_of(client).guards["vector_db"].breaker.force_open()
    job = await (await client.post("/v1/jobs", json={"query": "green tea"})).json()
    await wait_finished(client, job["id"])
    got = (await (await client.get(f"/v1/jobs/{job['id']}")).json())["results"][0]
    assert got["status"] == "done" and got["attempts"] == 3
    assert got["result"]["degraded"] is True and got["result"]["retries_exhausted"] is True


async def test_batches_may_exceed_the_query_body_limit_up_to_their_own(gateway_factory, data_dir):
    import json as _json

    client = await gateway_factory(make_settings(data_dir, **{"jobs.max_body_bytes": 200_000}))
    state_of(client).ready.clear()  # only the submission is under test
    batch = {"queries": [{"query": f"green tea question number {i} " + "x" * 60} for i in range(1500)]}
    body = _json.dumps(batch).encode()
    assert 64 * 1024 < len(body) < 200_000  # above server.max_body_bytes, below jobs.max_body_bytes
    resp = await client.post("/v1/jobs", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 202 and (await resp.json())["progress"]["total"] == 1500
    too_big = _json.dumps({"queries": batch["queries"] * 2}).encode()
    resp = await client.post("/v1/jobs", data=too_big, headers={"Content-Type": "application/json"})
    assert resp.status == 413 and (await resp.json())["error"]["type"] == "body_too_large"
    resp = await client.post("/v1/jobs", data=b'{"query": "tea"}', headers={"Content-Type": "text/plain"})
    assert resp.status == 415
