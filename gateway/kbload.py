"""Load the KB version ACTIVE points at into a running gateway (start-up, the poller, the admin API).

Its own module so that the admin routes and the app factory both use it without importing each other.
"""
from __future__ import annotations

import asyncio
import logging
import time

from gateway.retrieval import check_vectors_model
from gateway.state import AppState

log = logging.getLogger("rag_sidecar.app")  # kb_loaded keeps the logger docs/observability.md names


async def reload_kb(state: AppState) -> None:
    """Load whatever ACTIVE points at now and swap it in (the store loads its vectors when it keeps them).
    Raises KBError / KBCorrupt / ModelMismatch and leaves the loaded version serving."""
    kb = await asyncio.to_thread(state.kb_store.load)
    if kb is None:
        state.startup_stage = "no KB version: run `rag-sidecar ingest PATH`"
        return
    if state.store is not None and state.store.serves_kb_versions and state.embedder is not None:
        check_vectors_model(kb.version, kb.manifest, state.embedder)  # another model's vectors: refused
        state.store.load(kb.version, kb.path, kb.chunks)
    previous = state.kb.version if state.kb else None
    state.kb, state.kb_error = kb, None
    state.telemetry.kb_state(kb.version, len(kb.chunks), time.time() - kb.created_at)
    state.ready.set()
    state.startup_stage = "ready"
    if previous != kb.version:
        log.info("kb loaded", extra={"event": "kb_loaded", "kb_version": kb.version, "previous": previous,
                                     "chunks": len(kb.chunks), "keyword_index": kb.keyword_index is not None})
