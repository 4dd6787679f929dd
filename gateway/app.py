"""The aiohttp application factory: builds the state, wires the middleware chain and the routes.

Start-up never blocks the listener: /livez answers at once, /readyz is 503 until the KB is loaded
(or the sample corpus ingested on a first run), and the KB poller swaps in newly activated versions
without a restart.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from gateway import connguard, heap, lifecycle, openapi
from gateway.config import Settings
from gateway.cors import setup_cors
from gateway.jobs import routes as jobs
from gateway.llm_router import ModelRouter
from gateway.kb import KBError, KnowledgeBase, load_seed_vectors
from gateway.kbload import reload_kb, run_upgrades, serve_best
from gateway.logs import install_server_log_filter, resource_fields, setup_logging
from gateway.middleware import CHAIN
from gateway.pipeline import Pipeline
from gateway.retrieval import warm_embedder
from gateway.routes import admin, health, messages, metrics, query
from gateway.state import STATE, AppState, all_guards
from gateway.telemetry import Telemetry
from gateway.tracing import Tracer
from gateway.upstreams.factory import build_embedder, build_llm, build_store
from resilience import GuardRegistry
from resilience.registry import KeyedGuards
from resilience.ratelimit import make_rate_limiter

log = logging.getLogger("rag_sidecar.app")
KB_POLL_S = 2.0
Clock = Callable[[], float]


def build_guards(settings: Settings, telemetry: Telemetry, clock: Clock = time.monotonic) -> GuardRegistry:
    r = settings.resilience
    return GuardRegistry({"embedder": r.embedder, "vector_db": r.vector_db},
                         redis_url=r.redis_url, observer=telemetry, clock=clock)


def build_answer_cache(settings: Settings, data_dir: Path, on_error: Callable[[BaseException], None]) -> Any:
    """The configured answer cache: diskcache in ``data_dir/cache``, or Redis written through to it."""
    from fallback.cache import AnswerCache

    c = settings.cache
    local = AnswerCache(data_dir / "cache", fresh_ttl_s=c.fresh_ttl_s, stale_ttl_s=c.stale_ttl_s,
                        size_limit_bytes=c.size_limit_mb << 20, on_error=on_error)
    if c.backend != "redis" or not c.redis_url:
        return local
    from fallback.redis_cache import RedisAnswerCache

    return RedisAnswerCache(c.redis_url, local=local, fresh_ttl_s=c.fresh_ttl_s, stale_ttl_s=c.stale_ttl_s,
                            op_timeout_s=c.redis_timeout_s, max_entry_bytes=c.max_entry_kb << 10, on_error=on_error)


def build_router(settings: Settings, guards: GuardRegistry, telemetry: Telemetry,
                 clock: Clock = time.monotonic) -> ModelRouter:
    """The LLM model ladder with one guard per model (template ``resilience.llm``), the configured
    chain's guards made up front so /health and the metrics show them before the first call."""
    model_guards = KeyedGuards(settings.resilience.llm, max_guards=settings.llm.max_model_guards, clock=clock,
                               observer=telemetry, shared=guards.shared)
    router = ModelRouter(settings.llm, model_guards)
    router.chain(settings.llm.model)
    return router


def key_labels(keys: list[str]) -> dict[str, str]:
    """API key → the client's name in logs and its rate-limit bucket: the key's last 4 characters, plus a
    digest when two keys end alike (else they would share one bucket)."""
    ends = Counter(k[-4:] for k in keys)
    return {k: f"…{k[-4:]}" if ends[k[-4:]] == 1 else f"…{k[-4:]}:{hashlib.sha256(k.encode()).hexdigest()[:8]}"
            for k in keys}


def create_app(settings: Settings, *, configure_logging: bool = True,
               clock: Clock | None = None) -> web.Application:
    """Build the gateway. Nothing touches the network or the disk until the app starts.

    ``clock`` (monotonic seconds, default ``time.monotonic``) times the breakers' open interval, retry
    budgets, slow calls and the in-process rate limiter; tests inject one to skip ahead without sleeping.
    """
    if configure_logging:
        setup_logging(settings.logging.level, settings.logging.format,
                      service=resource_fields(settings.telemetry))
    install_server_log_filter()  # aiohttp's server logs carry raw request bytes: always redacted
    telemetry = Telemetry(settings.telemetry)
    data_dir = Path(settings.server.data_dir)
    clock = clock or time.monotonic
    guards = build_guards(settings, telemetry, clock)
    state = AppState(settings=settings, telemetry=telemetry, guards=guards,
                     llm_router=build_router(settings, guards, telemetry, clock),
                     kb_store=KnowledgeBase(data_dir / "kb", keep_versions=settings.kb.keep_versions), clock=clock,
                     tracer=Tracer(settings.telemetry.tracing, settings.telemetry))
    state.api_keys = key_labels([k.get_secret_value() for k in settings.auth.api_keys])
    server = settings.server
    app = web.Application(middlewares=CHAIN, client_max_size=server.max_body_bytes,
                          handler_args={"keepalive_timeout": server.keepalive_timeout_s})
    connguard.install(app, max_connections=server.max_connections, header_timeout_s=server.header_timeout_s)
    app[STATE] = state
    for module in (query, messages, health, admin, metrics, jobs, openapi):
        module.setup(app)
    setup_cors(app, settings.server.cors_origins)
    telemetry.register_routes(r.canonical for r in app.router.resources())
    telemetry.track_dependencies(g.name for g in all_guards(state))
    app.on_startup.append(_on_startup)
    app.on_cleanup.append(_on_cleanup)
    return app


async def _on_startup(app: web.Application) -> None:
    state = app[STATE]
    s = state.settings
    state.started_at = time.monotonic()
    data_dir = Path(s.server.data_dir)
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    state.embedder = build_embedder(s)
    state.store = build_store(s)
    state.llm = build_llm(s)
    if s.chaos.allow_fault_injection:  # admin-switchable faults inside the clients (drills), off by default
        from gateway.upstreams.faultinject import FaultRegistry

        state.faults = FaultRegistry(max_duration_s=s.chaos.max_fault_duration_s)
        state.embedder, state.store, state.llm = state.faults.wrap(state.embedder, state.store, state.llm)
    if s.cache.enabled and state.llm is not None:
        state.cache = build_answer_cache(s, data_dir, on_error=lambda exc: state.telemetry.cache_result("error"))
    if s.rate_limit.enabled:
        state.rate_limiter = make_rate_limiter(s.rate_limit, clock=state.clock)
    await state.guards.start()
    state.pipeline = Pipeline(s, state.guards, embedder=state.embedder, store=state.store, llm=state.llm,
                              cache=state.cache, kb=lambda: state.kb, telemetry=state.telemetry,
                              tracer=state.tracer, router=state.llm_router)
    state.tasks.append(asyncio.create_task(_load_kb(state), name="kb-load"))


async def _load_kb(state: AppState) -> None:
    """Load the active KB version (ingesting the sample corpus on a first embedded run), then poll."""
    s = state.settings
    kbs = state.kb_store
    store = state.store
    assert store is not None, "_on_startup builds the store before loading the KB"
    try:
        state.startup_stage = "connecting vector store"
        try:
            await asyncio.wait_for(store.connect(), timeout=s.vector_store.weaviate.init_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the guard degrades each call; start-up goes on
            log.warning("vector store not reachable at start-up; retrieval will degrade",
                        extra={"event": "vector_store_unreachable", "error": repr(exc)})
        removed = await asyncio.to_thread(kbs.clean_leftovers)
        if removed:
            log.warning("removed leftovers of crashed KB writes",
                        extra={"event": "kb_leftovers_removed", "versions": removed})
        if not kbs.version_names() and s.kb.auto_ingest_sample and store.serves_kb_versions:
            state.startup_stage = "ingesting sample corpus"
            log.info("no KB yet: ingesting the sample corpus", extra={"event": "kb_auto_ingest",
                                                                       "path": str(s.kb.sample_corpus)})

            def progress(stage: str, done: int, total: int) -> None:
                state.startup_progress = {"stage": stage, "done": done, "total": total}

            seed = load_seed_vectors(s.kb.sample_embeddings, state.embedder) if state.embedder else {}
            await kbs.ingest([s.kb.sample_corpus], embedder=state.embedder, chunk_chars=s.kb.chunk_chars,
                             overlap=s.kb.chunk_overlap, batch_size=s.embedder.batch_size, progress=progress,
                             label="sample corpus", root=Path(s.kb.sample_corpus).parent, seed_vectors=seed,
                             fast_embedder=getattr(store, "fast_embedder", None),
                             progressive_min_chunks=s.kb.progressive_min_chunks)
        state.startup_stage = "loading the embedder"
        await warm_embedder(state.embedder, log)
        state.startup_stage = "loading KB"
        # Verification reads every byte of the version: off the event loop.
        await serve_best(state)
    except Exception as exc:  # noqa: BLE001 - reported on /readyz and /health, never kills the process
        state.kb_error = f"{type(exc).__name__}: {exc}"
        state.startup_stage = "failed"
        log.error("KB load failed", extra={"event": "kb_load_failed", "error": state.kb_error})
    if not store.serves_kb_versions and state.kb is None:
        # A Weaviate collection we did not ingest (or whose local versions are all damaged): serve it;
        # the keyword fallback is missing (labelled).
        heap.settle("started")  # what start-up built stays out of full collections (server.gc_freeze)
        state.ready.set()
        state.startup_stage = "ready (no local KB version: keyword fallback unavailable)"
    state.settled.set()
    if not store.serves_kb_versions and s.kb.sync_interval_s > 0:
        state.tasks.append(asyncio.create_task(_sync_kb_periodically(state), name="kb-sync"))
    if getattr(store, "fast_embedder", None) is not None:  # progressive ingest: upgrade fast versions
        state.tasks.append(asyncio.create_task(run_upgrades(state), name="kb-upgrade"))
    await _poll_kb(state)


async def _sync_kb_periodically(state: AppState) -> None:
    """Weaviate backend: mirror the collection into a fresh keyword-index version on a schedule."""
    interval = state.settings.kb.sync_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            assert state.store is not None  # built in _on_startup
            version = await state.kb_store.sync_from(state.store)
        except Exception as exc:  # noqa: BLE001 - the old index keeps serving; the failure is logged and visible
            state.kb_error = f"sync failed: {type(exc).__name__}: {exc}"
            log.warning("keyword index sync failed; keeping the current version",
                        extra={"event": "kb_sync_failed", "error": state.kb_error})
            continue
        log.info("keyword index synced", extra={"event": "kb_synced", "kb_version": version})
        await reload_kb(state)


async def _poll_kb(state: AppState) -> None:
    """Swap in a newly activated version (CLI ingest/activate/rollback) without a restart."""
    # Nothing loaded yet: any ACTIVE is news (another process — a second worker's first-run ingest —
    # may have written it between our failed load and this line; its stamp must not count as seen).
    stamp = state.kb_store.active_stamp() if state.kb is not None else None
    while True:
        await asyncio.sleep(KB_POLL_S)
        new = state.kb_store.active_stamp()
        if new is None or new == stamp:
            continue
        stamp = new
        try:
            active = state.kb_store.active_version()
            if state.kb is not None and state.kb.degraded is None and active == state.kb.version:
                continue  # already serving it (the admin API activated it in this process)
            await reload_kb(state)
        except (KBError, OSError, ValueError) as exc:
            state.kb_error = f"{type(exc).__name__}: {exc}"
            log.error("KB reload failed; keeping the loaded version",
                      extra={"event": "kb_reload_failed", "error": state.kb_error})


async def _on_cleanup(app: web.Application) -> None:
    """Every step bounded (:mod:`gateway.lifecycle`): a close that hangs is logged and left behind."""
    state = app[STATE]
    await lifecycle.stop_tasks("background tasks", state.tasks)
    for name, closer in (("embedder", state.embedder), ("store", state.store), ("llm", state.llm)):
        if closer is not None:
            await lifecycle.bounded(f"close {name}", closer.close())
    if state.cache is not None:
        await lifecycle.bounded("close answer cache", state.cache.aclose())
    if state.rate_limiter is not None:
        await lifecycle.bounded("close rate limiter", state.rate_limiter.close())
    await lifecycle.bounded("close guards", state.guards.close())
    await lifecycle.bounded("close telemetry", state.telemetry.close())
    # aiohttp's middleware cache (web_app._build_middlewares, an lru_cache) keeps the Application alive after
    # cleanup: drop what is heavy (models, the KB) so a stopped app costs bytes, not ~100 MB (tests start many).
    if state.kb is not None:
        state.kb.chunks.close()
    state.pipeline = state.embedder = state.store = state.llm = state.kb = None
