"""The public KB API: build KB versions and run a gateway in-process, for the CLI, chaos, bench and tests.

    result = await ingest(settings, [Path("docs/")])       # a new KB version (+ upsert into Weaviate)
    version = await sync(settings)                          # Weaviate backend: rebuild the keyword index
    async with serving(settings) as state: ...              # the app's state, ready, without a listener

Nothing here prints: progress goes to the ``progress`` callback, results are returned.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gateway.config import Settings
from gateway.kb import KBError, KnowledgeBase, Progress

if TYPE_CHECKING:
    from gateway.state import AppState

T = TypeVar("T")
READY_TIMEOUT_S = 600.0  # a first run embeds the sample corpus; a real KB can take minutes to load


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` built. ``seconds``: wall time of chunking + embedding + writing."""

    version: str
    activated: bool
    chunks: int
    documents: int
    reused_vectors: int
    seconds: float
    vectors: str | None = None  # fast (progressive: quality vectors follow in the background) | quality | None
    quality_seconds: float | None = None  # with wait_quality: the upgrade's wall time

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def open_kb(settings: Settings) -> KnowledgeBase:
    """The KB versions under ``server.data_dir``."""
    return KnowledgeBase(Path(settings.server.data_dir) / "kb", keep_versions=settings.kb.keep_versions)


async def ingest(settings: Settings, paths: Sequence[Path], *, activate: bool = True, label: str = "",
                 progress: Progress | None = None, golden: Path | None = None, min_mrr: float | None = None,
                 max_mrr_drop: float = 0.02, wait_quality: bool = False) -> IngestResult:
    """Chunk and embed ``paths`` (files or directories) into a new KB version; with the Weaviate
    backend the chunks are also upserted into its collection. Raises :class:`KBError` (nothing to
    ingest), :class:`resilience.UpstreamError` (an upstream failed); the active version is unchanged
    unless everything succeeded. With ``golden``, the version is evaluated before activation and
    :class:`gateway.quality.QualityGateFailed` is raised on a regression (see :mod:`gateway.quality`).

    Progressive (:mod:`gateway.progressive`, embedded store): a large version is returned once searchable with
    fast vectors (``vectors="fast"``), and a running gateway upgrades it; ``wait_quality`` upgrades it here
    (or waits for the gateway doing it) before returning. ``golden`` needs the quality vectors to evaluate,
    so a gated ingest is never progressive."""
    from gateway.upstreams.factory import build_embedder, build_store

    from gateway.upstreams.base import IngestTarget

    kb = open_kb(settings)
    embedder = build_embedder(settings)
    store = build_store(settings)
    upsert = None
    try:
        if golden is not None and isinstance(store, IngestTarget):
            raise KBError("--golden gates versions of the embedded store; an external store's collection is "
                          "written during ingest, so there is no old version to keep active")
        if isinstance(store, IngestTarget):
            await store.connect()
            await store.ensure_collection(vectorizer=embedder is None)  # no embedder: the store embeds
            upsert = store.upsert
        t0 = time.perf_counter()
        fast = getattr(store, "fast_embedder", None) if golden is None else None
        version = await kb.ingest(list(paths), embedder=embedder, chunk_chars=settings.kb.chunk_chars,
                                  overlap=settings.kb.chunk_overlap, batch_size=settings.embedder.batch_size,
                                  activate=activate and golden is None, upsert=upsert, progress=progress,
                                  label=label, fast_embedder=fast,
                                  progressive_min_chunks=settings.kb.progressive_min_chunks)
        searchable_s = round(time.perf_counter() - t0, 2)
        quality_s = None
        if wait_quality and embedder is not None:
            from gateway.kb import is_fast_phase
            from gateway.progressive import wait_or_upgrade

            if is_fast_phase(next(v for v in kb.list_versions() if v["version"] == version)):
                t1 = time.perf_counter()
                await wait_or_upgrade(kb, version, embedder, batch_size=settings.embedder.batch_size,
                                      progress=progress)
                quality_s = round(time.perf_counter() - t1, 2)
        if golden is not None:
            from gateway.quality import evaluate_version, gate, store_evaluation

            evaluation = await evaluate_version(kb, version, golden, settings, embedder)
            store_evaluation(kb, version, evaluation)
            gate(kb, version, evaluation, min_mrr=min_mrr, max_drop=max_mrr_drop)
            if activate:
                kb.activate(version)
                await asyncio.to_thread(kb.prune)
        manifest = next(v for v in kb.list_versions() if v["version"] == version)
        from gateway.progressive import vectors_label

        return IngestResult(version=version, activated=activate, chunks=manifest["chunk_count"],
                            documents=manifest["document_count"], reused_vectors=manifest["reused_vectors"],
                            seconds=searchable_s, vectors=vectors_label(kb, version, manifest),
                            quality_seconds=quality_s)
    finally:
        if embedder is not None:
            await embedder.close()
        await store.close()


async def sync(settings: Settings, *, activate: bool = True, progress: Progress | None = None) -> str:
    """Mirror the vector store's collection into a new KB version (its keyword index); returns it."""
    from gateway.upstreams.factory import build_store

    store = build_store(settings)
    try:
        await store.connect()
        return await open_kb(settings).sync_from(store, activate=activate, progress=progress)
    finally:
        await store.close()


@asynccontextmanager
async def serving(settings: Settings, *, ready_timeout_s: float = READY_TIMEOUT_S) -> AsyncIterator[AppState]:
    """The gateway's state, started without a listener and ready (KB loaded); cleaned up on exit.
    Raises :class:`KBError` when it cannot become ready, TimeoutError after ``ready_timeout_s``."""
    from aiohttp import web

    from gateway.app import create_app
    from gateway.state import STATE

    app = create_app(settings, configure_logging=False)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        state = app[STATE]
        await asyncio.wait_for(state.settled.wait(), timeout=ready_timeout_s)
        if not state.ready.is_set():
            raise KBError(f"the gateway did not become ready: {state.kb_error or state.startup_stage}")
        yield state
    finally:
        await runner.cleanup()


async def in_process(settings: Settings, fn: Callable[[AppState], Awaitable[T]]) -> T:
    """``fn(state)`` against a ready in-process gateway (see :func:`serving`)."""
    async with serving(settings) as state:
        return await fn(state)
