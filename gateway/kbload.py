"""Load a KB version into a running gateway (start-up, the poller, the admin API).

Its own module so that the admin routes and the app factory both use it without importing each other.
Loading (verification, private copies) runs in a thread; swapping in is assignments only, on the loop.
"""
from __future__ import annotations

import asyncio
import logging
import time

from gateway.kb import KBVersion
from gateway.progressive import check_fast_set
from gateway.retrieval import check_vectors_model
from gateway.state import AppState

log = logging.getLogger("rag_sidecar.app")  # kb_loaded keeps the logger docs/observability.md names


async def reload_kb(state: AppState, kb: KBVersion | None = None) -> None:
    """Serve ``kb`` (already loaded by the caller), else whatever ACTIVE points at now. Raises KBError /
    KBCorrupt / ModelMismatch and leaves the loaded version serving."""
    if kb is None:
        kb = await asyncio.to_thread(state.kb_store.load)
    swap_in(state, kb)


async def serve_best(state: AppState) -> None:
    """Start-up: serve the active version, else the newest verified one, else a keyword index alone
    (labelled on /health, in a ``kb_fallback`` log event and on every answer). Raises KBError when
    versions exist but none is usable."""
    swap_in(state, await asyncio.to_thread(state.kb_store.load_serving))


def swap_in(state: AppState, kb: KBVersion | None) -> None:
    """Serve ``kb`` (loaded and verified; None: there is none yet). Raises ModelMismatch for vectors of
    another model (nothing is swapped then)."""
    if kb is None:
        state.startup_stage = "no KB version: run `rag-sidecar ingest PATH`"
        return
    if state.store is not None and state.store.serves_kb_versions and state.embedder is not None:
        if kb.degraded is not None and kb.degraded.reason == "keyword_only":
            state.store.load(kb.version, kb.path, kb.chunks, unavailable=kb.degraded.error)
        else:
            check_vectors_model(kb.version, kb.manifest, state.embedder)  # another model's vectors: refused
            if kb.vectors_tier == "fast":  # a progressive version before its upgrade (gateway.progressive)
                check_fast_set(kb.version, kb.manifest, getattr(state.store, "fast_embedder", None))
                state.store.load(kb.version, kb.path, kb.chunks, kb.vectors_fast, tier="fast")
            else:
                state.store.load(kb.version, kb.path, kb.chunks, kb.vectors)
    previous = state.kb.version if state.kb else None
    state.kb, state.kb_error = kb, None
    state.telemetry.kb_state(kb.version, len(kb.chunks), time.time() - kb.created_at,
                             evaluation=kb.manifest.get("evaluation"))
    state.ready.set()
    state.startup_stage = "ready" if kb.degraded is None else f"ready (degraded: {kb.degraded.reason})"
    if kb.degraded is not None:
        log.error("the active KB version is unusable; serving a fallback", extra={
            "event": "kb_fallback", "kb_version": kb.version, "reason": kb.degraded.reason,
            "active": kb.degraded.active, "error": kb.degraded.error})
    elif previous != kb.version:
        log.info("kb loaded", extra={"event": "kb_loaded", "kb_version": kb.version, "previous": previous,
                                     "chunks": len(kb.chunks), "keyword_index": kb.keyword_index is not None,
                                     "vectors": kb.vectors_tier})
