"""Dynamic batching of query embeds in the fair queue (issue 12, session 3).

Queries that arrive while an embed runs are embedded together in the next call; the batch is taken round
robin across clients, so one client's flood delays another client's query by at most the batch in flight.
Shedding (a client's bounded queue) and the guard's "queue time is not the embedder's" stay as they were.
"""
from __future__ import annotations

import asyncio
from typing import Any, Sequence

import numpy as np
import pytest

from gateway.upstreams.fair import FairEmbedder, current_client
from resilience import BreakerConfig, Deadline, DependencyUnavailable, Guard, GuardConfig, RetryConfig
from resilience.bulkhead import BulkheadFull
from tests.resilience.fakes import RecordingObserver

pytestmark = pytest.mark.timeout(60)

QUERIES = [f"how do I {verb} a file in python, case {i}" for i, verb in
           enumerate(["read", "copy", "compress", "lock", "hash", "delete", "rename", "watch", "split", "sort",
                      "encode", "checksum"])]


class CountingEmbedder:
    """A real embedder that counts the model calls it is asked to make."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[int] = []  # queries per call

    @property
    def max_query_tokens(self) -> int | None:
        return self.inner.max_query_tokens

    async def embed_query(self, text: str, *, request_id: str | None = None) -> np.ndarray:
        self.calls.append(1)
        return await self.inner.embed_query(text, request_id=request_id)

    async def embed_queries(self, texts: Sequence[str], *, request_ids: Sequence[str | None] | None = None,
                            ) -> np.ndarray:
        self.calls.append(len(texts))
        return await self.inner.embed_queries(texts, request_ids=request_ids)


class GatedEmbedder:
    """Each call waits for ``gate``; records which client's texts each call held (texts start with it)."""

    max_query_tokens = 256

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.batches: list[list[str]] = []

    async def embed_queries(self, texts: Sequence[str], *, request_ids: Sequence[str | None] | None = None,
                            ) -> np.ndarray:
        self.batches.append([t.split(":")[0] for t in texts])
        self.started.set()
        await self.gate.wait()
        return np.ones((len(texts), 4), dtype=np.float32)


async def _as(client: str, coro: Any) -> Any:
    current_client.set(client)  # a task copies the context: set inside it
    return await coro


@pytest.mark.parametrize("query_int8", [True, False], ids=["int8-queries", "float32-queries"])
async def test_concurrent_queries_share_model_calls_and_get_their_one_at_a_time_vectors(query_int8):
    from gateway.upstreams.onnx_embedder import MiniLMEmbedder

    inner = MiniLMEmbedder(query_int8=query_int8)
    alone = [await inner.embed_query(q) for q in QUERIES]
    counting = CountingEmbedder(inner)
    fair = FairEmbedder(counting, max_batch=16, max_queued_per_client=64)
    together = await asyncio.gather(*(fair.embed_query(q) for q in QUERIES))
    assert len(counting.calls) < len(QUERIES), counting.calls  # batched: fewer model calls than queries
    assert sum(counting.calls) == len(QUERIES)
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-5)
    await inner.close()


async def test_a_flooding_client_delays_another_clients_query_by_at_most_the_batch_in_flight():
    inner = GatedEmbedder()
    fair = FairEmbedder(inner, max_batch=4, max_queued_per_client=100)
    flood = [asyncio.create_task(_as("heavy", fair.embed_query(f"heavy: question {i}"))) for i in range(40)]
    await inner.started.wait()  # heavy's first batch holds the engine; 36 more of its queries wait
    light = asyncio.create_task(_as("light", fair.embed_query("light: one question")))
    await asyncio.sleep(0)
    inner.gate.set()
    await asyncio.gather(light, *flood)
    assert inner.batches[0] == ["heavy"] * 4
    assert "light" in inner.batches[1], inner.batches[:3]  # arrival order would put it in batch 11
    assert sum(map(len, inner.batches)) == 41 and max(map(len, inner.batches)) <= 4


async def test_a_client_over_its_queue_bound_is_shed_while_others_still_queue():
    inner = GatedEmbedder()
    fair = FairEmbedder(inner, max_batch=2, max_queued_per_client=3)
    running = [asyncio.create_task(_as("a", fair.embed_query(f"a: {i}"))) for i in range(2)]
    await inner.started.wait()  # a's first two are in the batch in flight: its queue is empty again
    waiting = [asyncio.create_task(_as("a", fair.embed_query(f"a: w{i}"))) for i in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFull):
        await _as("a", fair.embed_query("a: one too many"))
    other = asyncio.create_task(_as("b", fair.embed_query("b: fine")))
    await asyncio.sleep(0)
    assert fair.scheduler.waiting == 4 and fair.scheduler.shed == 1
    inner.gate.set()
    await asyncio.gather(*running, *waiting, other)
    assert fair.scheduler.in_flight == 0 and fair.scheduler.waiting == 0


async def test_waiting_for_a_batch_is_our_queue_not_the_embedders_timeout():
    inner = GatedEmbedder()
    fair = FairEmbedder(inner, max_batch=2, max_queued_per_client=8)
    observer = RecordingObserver()
    guard = Guard("embedder", GuardConfig(timeout_s=0.2, retry=RetryConfig(max_attempts=1), min_attempt_s=0.01,
                                          breaker=BreakerConfig(failure_threshold=1)), observer=observer)
    first = asyncio.create_task(_as("a", guard.call(lambda: fair.embed_query("a: 1"), Deadline(5))))
    second = asyncio.create_task(_as("a", guard.call(lambda: fair.embed_query("a: 2"), Deadline(5))))
    await asyncio.sleep(0)
    third = asyncio.create_task(_as("a", guard.call(lambda: fair.embed_query("a: 3"), Deadline(5))))
    # Two run in the gated batch (the embedder's own timeout), the third only waits in our queue.
    results = await asyncio.gather(first, second, third, return_exceptions=True)
    assert all(isinstance(r, DependencyUnavailable) for r in results)
    assert sorted(e[2] for e in observer.of("attempt")) == ["queued_timeout", "timeout", "timeout"]
    inner.gate.set()
    await asyncio.sleep(0.01)
    assert fair.scheduler.waiting == 0


def test_the_int8_query_model_is_cached_and_a_damaged_copy_is_rebuilt(tmp_path):
    from gateway.upstreams.onnx_embedder import _model_file, query_model

    source = _model_file()
    built = query_model(source, tmp_path)
    (cached,) = tmp_path.glob("*.onnx")
    assert cached.read_bytes() == built
    mtime = cached.stat().st_mtime_ns
    assert query_model(source, tmp_path) == built and cached.stat().st_mtime_ns == mtime  # read, not rebuilt
    cached.write_bytes(built[:1000])  # torn / damaged
    assert query_model(source, tmp_path) == built
class GatedBoth(GatedEmbedder):
    """Query batches and passage embeds, each waiting for its own gate."""

    def __init__(self) -> None:
        super().__init__()
        self.passage_gate = asyncio.Event()
        self.passages_started = asyncio.Event()

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        self.passages_started.set()
        await self.passage_gate.wait()
        return np.zeros((len(texts), 4), dtype=np.float32)


@pytest.mark.parametrize("slots", [1, 2])
async def test_passage_embeds_beside_batched_queries_never_take_a_query_slot(slots):
    # Before: a finished passage embed (ingest, the progressive upgrade) handed its slot straight to the next
    # queued waiter, a batched query, whose embed_query then returned None, and the slot was never freed:
    # in_flight stayed one too high and, with one slot, every later query waited until its timeout.
    # With batching on, passages no longer take query slots at all.
    inner = GatedBoth()
    fair = FairEmbedder(inner, concurrency=slots, max_batch=4, max_queued_per_client=32)
    passages = [asyncio.create_task(fair.embed_passages([f"passage {i}"])) for i in range(slots)]
    await inner.passages_started.wait()  # every slot runs a passage embed
    queries = [asyncio.create_task(_as("a", fair.embed_query(f"a: {i}"))) for i in range(3)]
    more_passages = asyncio.create_task(fair.embed_passages(["passage late"]))
    await asyncio.sleep(0)
    inner.gate.set()
    inner.passage_gate.set()
    vectors = await asyncio.wait_for(asyncio.gather(*queries), 5)
    await asyncio.wait_for(asyncio.gather(*passages, more_passages), 5)
    assert all(isinstance(v, np.ndarray) and v.shape == (4,) for v in vectors)
    assert fair.scheduler.in_flight == 0 and fair.scheduler.waiting == 0
    assert sum(map(len, inner.batches)) == 3  # the queries ran as query batches, not in a passage's slot
