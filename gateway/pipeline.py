"""The RAG pipeline — the only place that knows the degradation ladder.

    1. answer cache      fresh hit → mode=cached
    2. retrieve          embedder ─guard─► vector store ─guard─►  chunks, fused with the keyword index of
                         the same KB version (retriever=hybrid; vector when hybrid is off)
                         on DependencyUnavailable ─► keyword index (retriever=bm25, mode=keyword_fallback)
    3. generate          LLM primary ─guard─► LLM fallback model ─guard─►
                         on DependencyUnavailable ─► cached answer (stale ok) ─► extractive answer
    4. store in cache; the route emits metrics and one log line with every decision (the Trace)

Each rung that is skipped or fails is recorded as a degradation ``{component, reason}``; nothing is
dropped silently. :class:`LadderExhausted` is raised only when not even the keyword index can answer.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, AsyncGenerator, AsyncIterator, Callable

from fallback import fusion
from fallback.cache import AnswerStore, CacheEntry, CacheKey
from fallback.documents import Chunk
from fallback.extractive import NO_INFO_ANSWER, extractive_answer
from gateway import contract
from gateway.config import Settings
from gateway.contract import Component, Mode
from gateway.kb import KBVersion
from gateway.llm_router import ModelRouter
from gateway.telemetry import Telemetry
from gateway.tracing import NOOP, Tracer
from gateway.upstreams.base import LLM, Embedder, VectorStore
from resilience import Deadline, DependencyUnavailable, Guard, GuardRegistry, Reason
from resilience.registry import KeyedGuards


@dataclass
class QueryRequest:
    query: str
    top_k: int
    filters: dict[str, Any] | None = None
    stream: bool = False
    request_id: str = ""


@dataclass
class Trace:
    """Every decision taken for one request; rendered into the response contract and the log line."""

    degradations: list[dict[str, Any]] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    retriever: str | None = None
    keyword_only: bool = False  # the KB has no vectors by design (embedder.backend none): bm25 is the normal path
    generation: Mode | None = None  # full | cached | extractive
    cache: str = "off"  # off | miss | hit | stale | error
    model: str | None = None
    answer_age_s: float | None = None
    vectors: str | None = None  # the embedded store's vector set that answered: quality | fast (progressive)
    started: float = field(default_factory=time.perf_counter)
    tracer: Tracer = field(default=NOOP, repr=False)

    def degrade(self, component: str, reason: str | Reason | contract.Reason, **extra: Any) -> None:
        self.degradations.append(contract.degradation(component, reason, **extra))

    def timed(self, stage: str) -> _Stage:
        """``with trace.timed("retrieve"):`` adds the block's wall time to ``timings_ms[stage]`` (a span too,
        when tracing is on). A plain class, not ``@contextmanager``: a request passes 5–7 of these."""
        return _Stage(self, stage)

    @property
    def mode(self) -> Mode:
        if self.generation in (Mode.CACHED, Mode.EXTRACTIVE):
            return self.generation
        if self.retriever == "bm25" and not self.keyword_only:
            return Mode.KEYWORD_FALLBACK
        return Mode.FULL

    @property
    def degraded(self) -> bool:
        return contract.is_degraded(self.mode, self.degradations)

    def finish(self) -> None:
        self.timings_ms["total"] = round((time.perf_counter() - self.started) * 1e3, 3)


class _Stage:
    __slots__ = ("trace", "stage", "t0", "span")

    def __init__(self, trace: Trace, stage: str) -> None:
        self.trace, self.stage = trace, stage
        self.span: Any = None

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        if self.trace.tracer.enabled:
            self.span = self.trace.tracer.span(f"rag.{self.stage}")
            self.span.__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.span is not None:
                self.span.__exit__(*exc)
        finally:
            timings = self.trace.timings_ms
            timings[self.stage] = round(timings.get(self.stage, 0.0) + (time.perf_counter() - self.t0) * 1e3, 3)


@dataclass
class QueryResult:
    answer: str | None
    sources: list[Chunk]
    trace: Trace
    kb_version: str | None
    request_id: str

    def contract(self) -> dict[str, Any]:
        t = self.trace
        return contract.body(answer=self.answer, mode=t.mode, degradations=t.degradations,
                             sources=[c.source_view() for c in self.sources], kb_version=self.kb_version,
                             request_id=self.request_id, timings_ms=t.timings_ms, model=t.model,
                             answer_age_s=t.answer_age_s, vectors=t.vectors)


class LadderExhausted(Exception):
    """Not even the keyword index could answer (or, with ``fallback.extractive`` off, no model did): the
    route returns 503 + Retry-After."""

    def __init__(self, trace: Trace, retry_after_s: float,
                 message: str = "every retrieval path failed; retry later") -> None:
        super().__init__("every rung of the retrieval ladder failed")
        self.trace = trace
        self.retry_after_s = retry_after_s
        self.message = message  # what the 503 tells the client


class Pipeline:
    """Runs one query down the ladder. Construct once per app; safe for concurrent requests."""

    def __init__(self, settings: Settings, guards: GuardRegistry, *, embedder: Embedder | None,
                 store: VectorStore, llm: LLM | None, cache: AnswerStore | None,
                 kb: Callable[[], KBVersion | None], telemetry: Telemetry, tracer: Tracer = NOOP,
                 router: ModelRouter | None = None) -> None:
        self.settings = settings
        self.guards = guards
        self.embedder = embedder
        self.store = store
        self.llm = llm
        self.cache = cache
        self._kb = kb
        self.telemetry = telemetry
        self.tracer = tracer
        # The model ladder shared with /v1/messages (one guard per model); standalone: a private one.
        self.router = router or ModelRouter(settings.llm, KeyedGuards(settings.resilience.llm))
        self.reserve_s = settings.server.fallback_reserve_s
        # No embedder in front of the embedded store: the KB has no vectors and its keyword index is the
        # retriever (labelled keyword_only on /health), not a fallback.
        self.keyword_only = embedder is None and store.serves_kb_versions
        # Hybrid on the normal path: the embedded store is fused here with the KB version's keyword index.
        self.local_hybrid = settings.retrieval.hybrid and store.serves_kb_versions

    # ---- retrieval ------------------------------------------------------------------------
    async def retrieve(self, req: QueryRequest, deadline: Deadline, trace: Trace) -> list[Chunk]:
        """Vector search under guards; on any DependencyUnavailable, the local keyword index."""
        kb = self._kb()
        if kb is not None and kb.degraded is not None:  # not the version ACTIVE names (damaged): say so
            trace.degrade(contract.Component.KB, kb.degraded.reason, kb_version=kb.version)
            self.telemetry.degradation(contract.Component.KB, kb.degraded.reason)
        with trace.timed("retrieve"):
            if self.keyword_only:
                trace.keyword_only = True
                return self._keyword_search(req, trace)
            vector = None
            try:
                # An open vector DB breaker makes the embedding useless: fail over before paying for it.
                with trace.timed("vector_search"):
                    self.guards["vector_db"].check_admits()
                embedder = self.embedder
                # A progressive version's fast set: the store embeds the query with the fast model itself.
                if embedder is not None and not getattr(self.store, "embeds_queries", False):
                    with trace.timed("embed"):
                        vector = await self.guards["embedder"].call(
                            lambda: embedder.embed_query(req.query, request_id=req.request_id), deadline,
                            reserve_s=self.reserve_s)
                depth = max(req.top_k, self.settings.retrieval.candidates) if self.local_hybrid else req.top_k
                with trace.timed("vector_search"):
                    chunks = await self.guards["vector_db"].call(
                        lambda: self.store.search(vector, depth, query_text=req.query, filters=req.filters),
                        deadline, reserve_s=self.reserve_s)
                trace.vectors = getattr(chunks, "vectors", None)
                return self._fuse(req, chunks, depth, trace) if self.local_hybrid else self._vector_only(
                    req, chunks, trace)
            except DependencyUnavailable as exc:
                trace.degrade(exc.component, exc.reason)
                self.telemetry.degradation(exc.component, exc.reason.value)
            return self._keyword_search(req, trace)

    @staticmethod
    def _vector_only(req: QueryRequest, chunks: list[Chunk], trace: Trace) -> list[Chunk]:
        # A store that fuses itself (Weaviate's hybrid query) labels its chunks "hybrid".
        trace.retriever = "hybrid" if chunks and all(c.retriever == "hybrid" for c in chunks) else "vector"
        return chunks[:req.top_k]

    def _fuse(self, req: QueryRequest, vector_chunks: list[Chunk], depth: int, trace: Trace) -> list[Chunk]:
        """Hybrid: the vector results fused with the keyword index of the same KB version.

        Without a usable keyword index the vector results stand alone (``retriever="vector"``; /health
        shows the index as unavailable); a keyword search that fails is labelled on the answer.
        """
        kb = self._kb()
        index = kb.keyword_index if kb is not None else None
        if index is None or not self.settings.fallback.keyword_index:
            return self._vector_only(req, vector_chunks, trace)
        try:
            with trace.timed("keyword_search"):
                # outline=False: the vector half already brings the page topic (fallback/bm25.py)
                keyword_chunks = index.search(req.query, depth, filters=req.filters, outline=False)
        except Exception as exc:  # noqa: BLE001 - the vector half still answers; the failure is labelled
            trace.degrade("keyword_index", "error", detail=type(exc).__name__)
            self.telemetry.degradation("keyword_index", "error")
            return self._vector_only(req, vector_chunks, trace)
        cfg = self.settings.retrieval
        if cfg.fusion == "blend":
            fused = fusion.blend(vector_chunks, keyword_chunks, req.top_k, alpha=cfg.blend_alpha)
        else:
            fused = fusion.rrf([vector_chunks, keyword_chunks], req.top_k, k=cfg.rrf_k)
        trace.retriever = fusion.RETRIEVER
        return fused

    def _keyword_search(self, req: QueryRequest, trace: Trace) -> list[Chunk]:
        kb = self._kb()
        index = kb.keyword_index if kb is not None else None
        if index is None or not self.settings.fallback.keyword_index:
            enabled = self.settings.fallback.keyword_index
            reason = contract.Reason.MISSING if enabled else contract.Reason.DISABLED
            trace.degrade(Component.KEYWORD_INDEX, reason)
            self.telemetry.degradation(Component.KEYWORD_INDEX, reason)
            raise LadderExhausted(trace, self._retry_after())
        assert kb is not None  # it holds the index
        if kb.manifest.get("synced_from"):
            age = time.time() - kb.created_at
            if age > self.settings.kb.stale_after_s:
                trace.degrade(Component.KEYWORD_INDEX, contract.Reason.STALE, age_s=round(age, 1))
                self.telemetry.degradation(Component.KEYWORD_INDEX, contract.Reason.STALE)
        try:
            with trace.timed("keyword_search"):
                chunks = index.search(req.query, req.top_k, filters=req.filters)
        except Exception as exc:  # noqa: BLE001 - the last retrieval rung failed: labelled, then 503
            trace.degrade(Component.KEYWORD_INDEX, contract.Reason.ERROR, detail=type(exc).__name__)
            self.telemetry.degradation(Component.KEYWORD_INDEX, contract.Reason.ERROR)
            raise LadderExhausted(trace, self._retry_after()) from exc
        self.telemetry.keyword_search(trace.timings_ms["keyword_search"], len(chunks))
        trace.retriever = "bm25"
        return chunks

    def _retry_after(self) -> float:
        """Seconds until the soonest open breaker of the retrieval path may half-open (≥ 1)."""
        waits = []
        for name in ("embedder", "vector_db"):
            snap = self.guards[name].snapshot()
            until = snap.get("breaker", {}).get("open_remaining_s") if isinstance(snap.get("breaker"), dict) else None
            if until:
                waits.append(float(until))
        return max(1.0, min(waits)) if waits else 5.0

    # ---- generation -----------------------------------------------------------------------
    def _cache_key(self, req: QueryRequest, kb_version: str | None, vectors: str | None = None) -> CacheKey:
        params = {"top_k": req.top_k, "filters": req.filters or {}, "model": self.settings.llm.model}
        # Answers retrieved with a progressive version's fast vectors get their own namespace, so the swap to
        # quality vectors misses them (every other key is unchanged: no cache-wide miss on this release).
        if vectors == "fast":
            params["vectors"] = vectors
        return CacheKey(req.query, kb_version or "", params)

    def _llm_rungs(self) -> list[tuple[str, Guard, str]]:
        """(component, guard, model) per rung of :meth:`ModelRouter.chain` for the configured model."""
        return [(t.component, t.guard, t.model) for t in self.router.chain(self.settings.llm.model)]

    async def _cache_get(self, req: QueryRequest, kb_version: str | None, trace: Trace,
                         vectors: str | None = None):
        if self.cache is None or self.llm is None:
            return None
        with trace.timed("cache"):
            hit = await self.cache.get(self._cache_key(req, kb_version, vectors))
        return hit

    async def _stale_across_swap(self, req: QueryRequest, kb_version: str | None, trace: Trace, hit: Any) -> Any:
        """Stale-if-error across a progressive version's swap: with no answer cached since the quality vectors
        answer, the one made from its fast vectors (labelled ``vectors: fast`` when served)."""
        if hit is not None or trace.vectors != "quality":
            return hit
        return await self._cache_get(req, kb_version, trace, "fast")

    async def _open(self, req: QueryRequest) -> tuple[Trace, str | None, Any, QueryResult | None]:
        """What :meth:`answer` and :meth:`stream` start with: the trace, the KB version, the cache
        lookup, and — for a fresh hit — the finished result (nothing else runs then)."""
        trace = Trace(tracer=self.tracer)
        kb = self._kb()
        kb_version = kb.version if kb is not None else None
        hit = await self._cache_get(req, kb_version, trace, kb.vectors_tier if kb is not None else None)
        if hit is not None and hit.fresh:
            trace.cache, trace.generation, trace.answer_age_s = "hit", Mode.CACHED, hit.age_s
            trace.vectors = hit.entry.vectors
            self.telemetry.cache_result("hit")
            trace.finish()
            return trace, kb_version, hit, QueryResult(
                hit.entry.answer, [_source_chunk(s) for s in hit.entry.sources], trace, kb_version, req.request_id)
        if self.cache is not None and self.llm is not None:
            trace.cache = "miss"
            self.telemetry.cache_result("miss")
        return trace, kb_version, hit, None

    async def answer(self, req: QueryRequest, deadline: Deadline) -> QueryResult:
        """Run the whole ladder; raises :class:`LadderExhausted` only when retrieval is impossible."""
        trace, kb_version, hit, cached = await self._open(req)
        if cached is not None:
            return cached
        chunks = await self.retrieve(req, deadline, trace)
        text, sources = await self._generate(req, chunks, deadline, trace, hit, kb_version)
        trace.finish()
        return QueryResult(text, sources, trace, kb_version, req.request_id)

    async def _generate(self, req: QueryRequest, chunks: list[Chunk], deadline: Deadline, trace: Trace,
                        hit: Any, kb_version: str | None) -> tuple[str | None, list[Chunk]]:
        """The answer and the sources it cites (a stale cached answer cites its own sources)."""
        if not chunks:
            trace.generation = Mode.FULL if self.llm is not None else Mode.EXTRACTIVE
            return NO_INFO_ANSWER, chunks
        llm = self.llm
        if llm is not None:
            with trace.timed("generate"):
                for component, guard, model in self._llm_rungs():
                    try:
                        gen = await guard.call(
                            partial(llm.generate, req.query, chunks, model=model, request_id=req.request_id),
                            deadline, reserve_s=self.reserve_s)
                    except DependencyUnavailable as exc:
                        trace.degrade(component, exc.reason, model=model)
                        self.telemetry.degradation(component, exc.reason.value)
                        continue
                    trace.generation, trace.model = Mode.FULL, gen.model
                    await self._cache_put(req, kb_version, gen.text, chunks, trace)
                    return gen.text, chunks
            hit = await self._stale_across_swap(req, kb_version, trace, hit)
            return self._after_llm_failure(req, chunks, trace, hit)
        return self._extractive(req, chunks, trace), chunks

    def _after_llm_failure(self, req: QueryRequest, chunks: list[Chunk], trace: Trace,
                           hit: Any) -> tuple[str | None, list[Chunk]]:
        if hit is not None:  # stale-if-error: a fresh hit was served before reaching the LLM
            # made from the fast vectors of a version now served from its quality ones (before the swap)
            older = "fast" if hit.entry.vectors == "fast" and trace.vectors != "fast" else None
            trace.cache, trace.generation, trace.answer_age_s = "stale", Mode.CACHED, hit.age_s
            trace.vectors = hit.entry.vectors  # the vectors behind the answer served, not this request's retrieval
            trace.degrade(Component.ANSWER_CACHE, contract.Reason.STALE_ANSWER, age_s=round(hit.age_s, 3),
                          vectors=older)
            self.telemetry.degradation(Component.ANSWER_CACHE, contract.Reason.STALE_ANSWER)
            self.telemetry.cache_result("stale_serve")
            return hit.entry.answer, [_source_chunk(s) for s in hit.entry.sources]
        if not self.settings.fallback.extractive:  # the operator wants a 503, not a non-LLM answer
            waits = [w for _, guard, _ in self._llm_rungs() if (w := guard.breaker.open_remaining_s())]
            raise LadderExhausted(trace, max(1.0, min(waits)) if waits else 5.0,
                                  "no model answered and extractive answers are off (fallback.extractive); retry later")
        return self._extractive(req, chunks, trace), chunks

    def _extractive(self, req: QueryRequest, chunks: list[Chunk], trace: Trace) -> str | None:
        with trace.timed("extractive"):
            result = extractive_answer(req.query, chunks, max_sentences=self.settings.fallback.extractive_sentences)
        trace.generation = Mode.EXTRACTIVE
        return result.text

    async def _cache_put(self, req: QueryRequest, kb_version: str | None, text: str, chunks: list[Chunk],
                         trace: Trace) -> None:
        # Only answers made on the full path: a cache hit is served as degraded=false, so an answer built
        # from BM25 chunks or by the fallback model must not come back later looking healthy.
        if self.cache is None or trace.degraded:
            return
        entry = CacheEntry(answer=text, sources=[c.source_view() for c in chunks], mode=Mode.FULL,
                           kb_version=kb_version or "", vectors=trace.vectors)
        # The set runs in a worker thread inside the cache (~150 µs); awaiting keeps ordering simple.
        await self.cache.put(self._cache_key(req, kb_version, trace.vectors), entry)

    # ---- streaming ------------------------------------------------------------------------
    async def stream(self, req: QueryRequest, deadline: Deadline) -> AsyncGenerator[tuple[str, Any], None]:
        """Yield ``("delta", text)``, ``("discard", {...})`` and finally ``("done", QueryResult)``.

        A stream that fails after text was sent cannot be retried transparently: the client is told
        to discard what it got (``discard`` event) and the next rung's answer follows.
        """
        trace, kb_version, hit, cached = await self._open(req)
        if cached is not None:
            yield "delta", cached.answer
            yield "done", cached
            return
        chunks = await self.retrieve(req, deadline, trace)
        llm = self.llm
        if not chunks or llm is None:
            text, sources = await self._generate(req, chunks, deadline, trace, hit, kb_version)
            if text:
                yield "delta", text
            trace.finish()
            yield "done", QueryResult(text, sources, trace, kb_version, req.request_id)
            return
        with trace.timed("generate"):
            for guard_name, guard, model in self._llm_rungs():
                parts: list[str] = []
                agen: Any = None

                async def open_stream(m: str = model) -> tuple[Any, str | None]:
                    # A fresh stream per attempt: a failed generator cannot be resumed by a retry.
                    stream = llm.stream(req.query, chunks, model=m, request_id=req.request_id)
                    try:
                        return stream, await _first(stream)
                    except BaseException:
                        await stream.aclose()
                        raise

                try:
                    # The guard covers time-to-first-token; the rest runs under the request deadline.
                    agen, first = await guard.call(open_stream, deadline, reserve_s=self.reserve_s)
                    if first is not None:
                        parts.append(first)
                        yield "delta", first
                    while True:
                        timeout = deadline.stage_timeout(guard.config.timeout_s, self.reserve_s)
                        async with asyncio.timeout(timeout):
                            nxt = await _first(agen)
                        if nxt is None:
                            break
                        parts.append(nxt)
                        yield "delta", nxt
                except DependencyUnavailable as exc:
                    trace.degrade(guard_name, exc.reason, model=model)
                    self.telemetry.degradation(guard_name, exc.reason.value)
                    continue
                except (Exception, TimeoutError) as exc:  # mid-stream cut/stall after text was sent
                    if agen is not None:
                        await agen.aclose()
                    reason = contract.Reason.TIMEOUT if isinstance(exc, TimeoutError) else contract.Reason.STREAM_CUT
                    trace.degrade(guard_name, reason, model=model)
                    self.telemetry.degradation(guard_name, reason)
                    yield "discard", {"reason": reason, "component": guard_name, "chars": sum(map(len, parts))}
                    break
                text = "".join(parts)
                trace.generation, trace.model = Mode.FULL, model
                await self._cache_put(req, kb_version, text, chunks, trace)
                trace.finish()
                yield "done", QueryResult(text, chunks, trace, kb_version, req.request_id)
                return
        hit = await self._stale_across_swap(req, kb_version, trace, hit)
        text, sources = self._after_llm_failure(req, chunks, trace, hit)
        if text:
            yield "delta", text
        trace.finish()
        yield "done", QueryResult(text, sources, trace, kb_version, req.request_id)


async def _first(agen: AsyncIterator[str]) -> str | None:
    """Next item of an async iterator, None at its end."""
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return None


def _source_chunk(view: dict[str, Any]) -> Chunk:
    """Rebuild a (text-less) Chunk from a cached ``sources[]`` entry."""
    return Chunk(id=view.get("id", ""), text="", title=view.get("title", ""), source=view.get("source", ""),
                 score=float(view.get("score", 0.0)), retriever=view.get("retriever", ""))
