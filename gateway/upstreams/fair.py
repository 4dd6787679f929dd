"""A fair queue in front of any embedder: one client's work cannot starve the others.

The local embedder has one engine thread; before this, every query waited in the thread pool's FIFO
in arrival order, so one client sending long queries (12–16 s each) pushed everyone else's embeds past
the stage timeout and opened the embedder breaker. :class:`FairEmbedder` admits at most
``concurrency`` embeds at once and picks the next one by deficit round robin over clients (Shreedhar &
Varghese; the scheduler Envoy and Linux' fq use), the cost of a query being its size in the model's
tokens (capped at ``max_query_tokens``): a client sending 256-token queries gets its turn as often as a
client sending 20-token ones, but no more work per round than its share.

* Who the client is comes from :data:`current_client`, set by the auth middleware (API key, else the
  peer address).
* Time spent waiting here is reported to the guard with :func:`resilience.guard.note_queued`: it is
  never a slow call or a timeout of the embedder.
* A slot is held until the embed really ends, even when the caller gave up: the engine thread cannot
  be interrupted, so the next waiter must not start before it is free.
* A client with ``max_queued_per_client`` embeds already waiting is shed at once
  (:class:`~resilience.bulkhead.BulkheadFull`, reason ``shed``), so one client cannot fill the
  guard's bulkhead either.

Backend-agnostic: it only needs ``embed_query`` / ``embed_passages``; without query batching, ingest
batches pass through the same queue as the client ``ingest`` so a re-index cannot starve queries either.
With query batching, passages run on the embedder's own passage session outside the query slots (see
:meth:`FairEmbedder.embed_passages`).

**Dynamic batching of query embeds** (``max_batch > 1`` and an inner embedder with ``embed_queries``;
what TEI and Triton's dynamic batcher do): a query is queued per client; whenever an engine slot is free
(at most ``concurrency`` batches run at once), the next batch is taken from the queues in the same deficit
round robin order — one query per client per turn, new clients first — up to ``max_batch`` queries and
``max_batch_cost`` cost units (one query always goes, whatever its cost). There is no timer: queries that
arrive while a batch runs form the next one, so an idle gateway embeds a lone query at once (batching saved
at most ~15 % of a query's CPU here, never worth waiting for). A client flooding the queue delays another
client's query by at most the batch in flight: the newcomer is in the next batch. The per-client queue
bound and the shed (``BulkheadFull``) are unchanged; the time a query waited for its batch to start is
reported with :func:`note_queued`, never the batch's own run time.
"""
from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict, deque
from typing import Any, Callable, Sequence

import numpy as np

from resilience.bulkhead import BulkheadFull
from resilience.guard import note_queued

current_client: contextvars.ContextVar[str] = contextvars.ContextVar("rag_embed_client", default="anonymous")
INGEST_CLIENT = "ingest"


class _Waiter:
    __slots__ = ("cost", "future", "payload", "started")

    def __init__(self, cost: int, future: asyncio.Future[Any], payload: Any = None) -> None:
        self.cost = cost
        self.future = future
        self.payload = payload
        self.started: float | None = None  # loop time its batch started (batched queries)


class FairScheduler:
    """Deficit round robin over clients with ``concurrency`` slots, new clients first (fq_codel).

    ``quantum`` is the credit a client earns per round (in cost units, here tokens); a waiter is
    served once its client's credit covers its cost, so costs above ``quantum`` take several rounds.
    A *sparse* client (nothing queued and nothing running) joins the *new* list, served before the
    backlogged (*old*) clients: a client sending one request at a time waits for at most the embeds in
    flight, however many a heavy client keeps queued. A client with work running or queued joins the
    old list, so keeping requests in flight never buys new-list priority. (Many sparse clients can
    delay a backlogged one; its own stage timeout bounds that, as fq_codel accepts.)
    """

    def __init__(self, concurrency: int = 1, *, quantum: int = 256, max_queued_per_client: int = 8,
                 name: str = "embedder") -> None:
        self.concurrency = concurrency
        self.quantum = quantum
        self.max_queued_per_client = max_queued_per_client
        self.name = name
        self.in_flight = 0
        self.shed = 0
        self._running: dict[str, int] = {}
        self._queues: dict[str, deque[_Waiter]] = {}
        self._deficit: dict[str, int] = {}
        self._new: OrderedDict[str, None] = OrderedDict()  # clients in turn order
        self._old: OrderedDict[str, None] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def acquire(self, client: str, cost: int) -> None:
        """Wait for a slot. Raises BulkheadFull when ``client`` already has its maximum waiting."""
        if self.in_flight < self.concurrency and not self._queues:
            self.in_flight += 1
            self._running[client] = self._running.get(client, 0) + 1
            return
        waiter = self.enqueue(client, cost)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(client)  # handed a slot just as the caller gave up: pass it on
            else:
                self._forget(client, waiter)
            raise

    def _drop(self, client: str) -> None:
        del self._queues[client]
        self._deficit.pop(client, None)  # an idle client keeps no credit (DRR)
        self._new.pop(client, None)
        self._old.pop(client, None)

    def _forget(self, client: str, waiter: _Waiter) -> None:
        queue = self._queues.get(client)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            self._drop(client)

    def release(self, client: str) -> None:
        """``client``'s slot is free: hand it to the next waiter, else keep it free."""
        self._ran(client)
        picked = self._pick()
        if picked is None:
            self.in_flight -= 1
            return
        picked[1].future.set_result(None)  # the slot changes hands: in_flight unchanged

    def _ran(self, client: str) -> None:
        running = self._running.get(client, 0) - 1
        if running > 0:
            self._running[client] = running
        else:
            self._running.pop(client, None)

    def _pick(self, fits: Callable[[_Waiter], bool] | None = None) -> tuple[str, _Waiter] | None:
        """The next waiter in deficit round robin order, taken off its queue (counted as running); None
        when nothing waits or the next one does not ``fits`` (it then stays first in line)."""
        # Each pass over the clients adds a quantum to each, so this ends within
        # ceil(max cost / quantum) passes.
        while self._queues:
            turn = self._new if self._new else self._old
            client = next(iter(turn))
            queue = self._queues[client]
            head = queue[0]
            if self._deficit[client] < head.cost:
                self._deficit[client] += self.quantum
                if self._deficit[client] < head.cost:
                    turn.pop(client)
                    self._old[client] = None  # to the back of the old list
                    continue
            if fits is not None and not fits(head):
                return None
            queue.popleft()
            self._deficit[client] -= head.cost
            if queue:
                turn.pop(client)
                self._old[client] = None  # one waiter per client per turn
            else:
                self._drop(client)
            self._running[client] = self._running.get(client, 0) + 1
            return client, head
        return None

    # ---- batches (one slot runs several waiters at once) -------------------------------------
    def enqueue(self, client: str, cost: int, payload: Any = None) -> _Waiter:
        """Queue a waiter (with ``payload`` for a batch, whose future gets the result). Raises BulkheadFull
        when ``client`` already has its maximum waiting."""
        queue = self._queues.get(client)
        if queue is not None and len(queue) >= self.max_queued_per_client:
            self.shed += 1
            raise BulkheadFull(f"{self.name}:{client}", 0.0)
        if queue is None:
            queue = self._queues[client] = deque()
            self._deficit[client] = 0
            (self._old if self._running.get(client) else self._new)[client] = None
        waiter = _Waiter(max(1, cost), asyncio.get_running_loop().create_future(), payload)
        queue.append(waiter)
        return waiter

    def forget(self, client: str, waiter: _Waiter) -> None:
        """A queued waiter's caller gave up: take it out of the queue (no-op once it was taken)."""
        self._forget(client, waiter)

    def take_batch(self, max_items: int, max_cost: int) -> list[tuple[str, _Waiter]]:
        """Up to ``max_items`` waiters (and ``max_cost`` in total, but always one) for one free slot,
        in deficit round robin order; the slot is taken (``in_flight``) when any is returned."""
        if self.in_flight >= self.concurrency:
            return []
        batch: list[tuple[str, _Waiter]] = []
        total = 0

        def fits(w: _Waiter) -> bool:
            return not batch or total + w.cost <= max_cost

        while len(batch) < max_items:
            picked = self._pick(fits)
            if picked is None:
                break
            batch.append(picked)
            total += picked[1].cost
        if batch:
            self.in_flight += 1
        return batch

    def finish_batch(self, batch: list[tuple[str, _Waiter]]) -> None:
        """The batch's slot is free again."""
        for client, _ in batch:
            self._ran(client)
        self.in_flight -= 1

    def snapshot(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "in_flight": self.in_flight, "waiting": self.waiting,
                "clients_waiting": len(self._queues), "shed": self.shed}


class _Query:
    __slots__ = ("text", "request_id")

    def __init__(self, text: str, request_id: str | None) -> None:
        self.text = text
        self.request_id = request_id


class FairEmbedder:
    """Wraps an embedder with a :class:`FairScheduler`; everything else is delegated to it.

    ``max_batch > 1`` batches query embeds (module docstring) when the inner embedder has
    ``embed_queries(texts, request_ids=...)``; ``concurrency`` is then the number of batches run at once.
    ``max_batch_cost`` (cost units, default four maximal queries) bounds one batch's work, hence how long a
    query that just missed a batch waits for the next one.
    """

    def __init__(self, inner: Any, *, concurrency: int = 1, max_queued_per_client: int = 8,
                 max_batch: int = 1, max_batch_cost: int | None = None) -> None:
        self.inner = inner
        limit = getattr(inner, "max_query_tokens", None) or 512
        self.scheduler = FairScheduler(concurrency, quantum=limit, max_queued_per_client=max_queued_per_client)
        self.max_batch = max_batch if hasattr(inner, "embed_queries") else 1
        self.max_batch_cost = max_batch_cost or 4 * limit
        self.batches = 0  # model calls made for batched queries, and the queries they embedded
        self.batched = 0
        self._dispatch_pending = False
        self._tasks: set[asyncio.Task[None]] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _cost(self, text: str) -> int:
        # Scheduling must not tokenize on the event loop: one character per token is the worst case
        # of the tokenizers we ship (CJK), and the embedder truncates to its window anyway.
        limit = getattr(self.inner, "max_query_tokens", None) or 512
        return min(len(text), limit)

    async def _run(self, client: str, cost: int, make: Any) -> Any:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            await self.scheduler.acquire(client, cost)
        finally:  # also when the guard's timeout ends the wait: the time was ours, not the embedder's
            note_queued(loop.time() - t0)
        try:
            task = asyncio.ensure_future(make())
        except BaseException:
            self.scheduler.release(client)
            raise
        task.add_done_callback(lambda done: self._done(client, done))
        return await asyncio.shield(task)

    def _done(self, client: str, task: asyncio.Future[Any]) -> None:
        self.scheduler.release(client)
        if not task.cancelled():
            task.exception()  # retrieved here when the caller gave up, so asyncio does not warn

    async def embed_query(self, text: str, *, request_id: str | None = None) -> np.ndarray:
        if self.max_batch > 1:
            return await self._batched(current_client.get(), text, request_id)
        return await self._run(current_client.get(), self._cost(text),
                               lambda: self.inner.embed_query(text, request_id=request_id))

    # ---- dynamic batching ----------------------------------------------------------------------
    async def _batched(self, client: str, text: str, request_id: str | None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            waiter = self.scheduler.enqueue(client, self._cost(text), _Query(text, request_id))
        except BulkheadFull:
            note_queued(0.0)
            raise
        if not self._dispatch_pending:  # after this loop turn: queries arriving together batch together
            self._dispatch_pending = True
            loop.call_soon(self._dispatch)
        try:
            return await waiter.future  # cancelling the caller cancels it; a running batch skips it
        finally:
            if waiter.started is None:
                self.scheduler.forget(client, waiter)
            # Waiting for a batch to start is our queue, not the embedder; the batch's run time is its own.
            note_queued((waiter.started if waiter.started is not None else loop.time()) - t0)

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        while True:
            batch = self.scheduler.take_batch(self.max_batch, self.max_batch_cost)
            if not batch:
                return
            task = asyncio.ensure_future(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[tuple[str, _Waiter]]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _, w in batch:
            w.started = started
        queries = [w.payload for _, w in batch]
        try:
            vectors = await self.inner.embed_queries([q.text for q in queries],
                                                     request_ids=[q.request_id for q in queries])
        except BaseException as exc:  # every caller of the batch hears it (CancelledError: closing)
            for _, w in batch:
                if not w.future.done():
                    w.future.cancel() if isinstance(exc, asyncio.CancelledError) else w.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for i, (_, w) in enumerate(batch):
                if not w.future.done():  # its caller gave up meanwhile
                    w.future.set_result(vectors[i])
        finally:
            self.batches += 1
            self.batched += len(batch)
            self.scheduler.finish_batch(batch)
            self._dispatch()


    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if self.max_batch > 1:
            # Batched queries are handed out by _dispatch, which a plain slot's release() does not know:
            # a passage embed finishing beside queued queries (ingest, the progressive upgrade while
            # serving) handed its slot to a query batch waiter, whose embed_query returned None and whose
            # slot was never freed. Passages run on their own session (and threads) here, outside the
            # query slots; the fair queue schedules queries only.
            return await self.inner.embed_passages(texts)
        cost = sum(len(t) for t in texts)
        return await self._run(INGEST_CLIENT, cost, lambda: self.inner.embed_passages(texts))

    async def close(self) -> None:
        await self.inner.close()
