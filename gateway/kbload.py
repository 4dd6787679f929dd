"""Load a KB version into a running gateway (start-up, the poller, the admin API).

Its own module so that the admin routes and the app factory both use it without importing each other.
Loading (verification, private copies) runs in a thread; swapping in is assignments only, on the loop.
:func:`run_upgrades` swaps a progressive version's quality vectors in when its upgrade is done
(``gateway.progressive``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from gateway import heap, progressive
from gateway.kb import KBError, KBVersion, is_fast_phase
from gateway.retrieval import check_fast_set, check_vectors_model
from gateway.state import AppState

log = logging.getLogger("rag_sidecar.app")  # kb_loaded keeps the logger docs/observability.md names
klog = logging.getLogger("rag_sidecar.kb")  # progressive ingest's upgrade events (docs/observability.md)


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
    old = state.kb
    previous = old.version if old else None
    state.kb, state.kb_error = kb, None
    if old is not kb:  # before ready: start-up traffic never meets the pause (server.gc_freeze)
        heap.settle("kb_loaded" if old is None else "kb_swap")
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


async def run_upgrades(state: AppState) -> None:
    """Background task of every gateway process: upgrade (or wait for) the served fast-phase version, then
    swap its quality set in. Never raises: failures are logged, shown on /health and retried with backoff."""
    try:
        await _run_upgrades(state)
    except asyncio.CancelledError as exc:
        # A cancelled task keeps its exception, and the traceback every frame's locals (the quality model, the
        # KB version): cut it, so a stopped app frees them (tests start hundreds of apps in one process).
        raise exc.with_traceback(None) from None


async def _run_upgrades(state: AppState) -> None:
    backoff = progressive.RETRY_S[0]
    while True:
        kb = state.kb
        embedder = state.embedder
        if kb is None or embedder is None or kb.vectors_tier != "fast":
            kb = embedder = None  # not held across the wait: a version swapped out meanwhile is freed at once
            await asyncio.sleep(progressive.POLL_S)
            continue
        status = state.upgrade
        if status is None or status.version != kb.version:
            status = state.upgrade = progressive.UpgradeStatus(kb.version, total=len(kb.chunks))
            status.done = progressive.quality_done(state.kb_store, kb.version, kb.manifest)
        try:
            await progressive.upgrade_version(state.kb_store, kb.version, embedder,
                                              batch_size=state.settings.embedder.batch_size,
                                              progress=progressive.ProgressLog(status),
                                              keep_going=partial(_still_served, state, kb), loaded=kb)
        except progressive.UpgradeStopped:
            continue  # the served version changed (activation, rollback): upgrade that one, if it needs it
        except progressive.UpgradeBusy:
            status.state = "waiting"
            manifest = await asyncio.to_thread(progressive.manifest_or_none, state.kb_store, kb.version)
            if manifest is not None:
                status.advance(progressive.quality_done(state.kb_store, kb.version, manifest))
            if manifest is None or is_fast_phase(manifest):
                await asyncio.sleep(progressive.POLL_S)
                continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the fast set keeps serving; labelled and retried
            status.state, status.error = "failed", f"{type(exc).__name__}: {exc}"
            klog.error("kb upgrade to quality vectors failed; the fast vectors keep serving", extra={
                "event": "kb_upgrade_failed", "kb_version": kb.version, "error": status.error,
                "retry_in_s": backoff})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, progressive.RETRY_S[1])
            continue
        backoff = progressive.RETRY_S[0]
        try:
            new = await asyncio.to_thread(state.kb_store.load, kb.version)
        except KBError as exc:
            status.state, status.error = "failed", f"{type(exc).__name__}: {exc}"
            klog.error("loading the upgraded KB version failed; the fast vectors keep serving",
                       extra={"event": "kb_upgrade_failed", "kb_version": kb.version, "error": status.error})
            await asyncio.sleep(progressive.POLL_S)
            continue
        if new is not None and state.kb is kb:  # still the served version (no activation meanwhile)
            swap_in(state, new)
            status.state, status.done, status.error, status.eta_s = "complete", status.total, None, 0.0
            klog.info("serving quality vectors", extra={"event": "kb_vectors_swapped", "kb_version": kb.version})
        elif new is not None:
            new.chunks.close()


def _still_served(state: AppState, kb: KBVersion) -> bool:
    """Whether ``kb`` is still the served version (an activation or rollback stops its upgrade)."""
    return state.kb is kb
