"""Progressive ingest: a new KB version is searchable at once with fast vectors, then upgraded to quality ones.

Why: the quality model (MiniLM int8) embeds ~5–25 passages/s on 2 cores, so a 10,000-page KB would take
hours before its first answer; the fast tier (WordLlama 256-d, static) embeds hundreds to thousands a second.

1. **Ingest** (``kb.progressive``, embedded store, a local quality model, at least
   ``kb.progressive_min_chunks`` chunks without a cached quality vector): chunks + keyword index + *fast*
   vectors (``vectors.fast.npy``), manifest ``"vectors": "fast"``; activated at once. ``rag-sidecar ingest``
   returns then (``--wait-quality`` blocks until the upgrade is done).
2. **Serving**: the embedded store searches the fast set with fast query vectors, fused with BM25 as usual.
   Answers say so: ``"vectors": "fast"`` in the body and ``X-RAG-Vectors: fast`` — not ``degraded`` (nothing
   failed; this is the version's state, like ``kb_version``). Answers cached meanwhile are keyed apart
   (``gateway.pipeline``): the swap misses them; only stale-if-error serves one later, labelled ``fast``.
3. **Upgrade** (:func:`upgrade_version`): the quality model embeds every chunk in the background, each batch
   journaled (``<kb>/embed-journal/<model@version>``): a killed or failed upgrade resumes where it stopped.
   When complete, ``vectors.npy`` is written beside and the manifest replaced atomically (``"vectors":
   "quality"``); a crash before that leaves the fast version as it was. Serving processes then load the
   quality set (verified like any version) and swap it in memory with one assignment.
4. **Who upgrades**: one process at a time holds ``<version>/.upgrade.lock`` (``flock``; the kernel drops it
   when a process dies, so a SIGKILLed upgrader never blocks the next). Every gateway process (each worker of
   ``serve --workers N``) runs ``gateway.kbload.run_upgrades``: it takes the lock and upgrades, or — when
   another process holds it — polls the manifest and swaps in the quality set when it appears. So every
   worker swaps.
5. **Labels**: ``kb list`` and ``/health`` (``components.kb.vectors``): ``fast`` → ``quality n/N`` (serving
   fast, n quality vectors done) → ``quality``; ``/health`` adds rate and ETA, and logs ``kb_upgrade_progress``
   lines every 10%. A failing quality embedder is labelled (``kb_upgrade:error`` in ``degraded_components``),
   retried with backoff; the fast set keeps serving.

The Weaviate backend is not progressive: its collection holds one vector per object (ours), written during
ingest by the configured embedder; a fast→quality swap there would need named vectors and a re-query path
(left out). Model checks: the quality set against ``embedder`` (as before), the fast set against the fast
tier's model id — a version whose fast vectors another model made is refused like any mismatch.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.kb import (
    FAST_VECTORS,
    KBCorrupt,
    KBError,
    KBVersion,
    KnowledgeBase,
    Progress,
    embedder_id,
    is_fast_phase,
)
from gateway.retrieval import ModelMismatch, check_fast_set

if TYPE_CHECKING:
    from gateway.state import AppState
    from gateway.upstreams.base import Embedder

log = logging.getLogger("rag_sidecar.kb")
LOCK_FILE = ".upgrade.lock"
POLL_S = 2.0  # how often a process that does not hold the lock looks for the finished quality set
RETRY_S = (5.0, 300.0)  # backoff after a failed upgrade: first wait, cap


# ---- progress ------------------------------------------------------------------------------------------
def quality_done(kb: KnowledgeBase, version: str, manifest: dict[str, Any]) -> int:
    """Quality vectors journaled so far for a fast-phase version (from file sizes: cheap enough for /health)."""
    made_by = manifest.get("embedder") or {}
    journal = kb.upgrade_journal(version, str(made_by.get("name")), made_by.get("dim"))
    return min(journal.count(), int(manifest.get("chunk_count") or 0))


def vectors_label(kb: KnowledgeBase, version: str, manifest: dict[str, Any]) -> str | None:
    """``fast`` | ``quality n/N`` (serving fast, n quality vectors done) | ``quality`` | None (no vectors)."""
    if is_fast_phase(manifest):
        done = quality_done(kb, version, manifest)
        return f"quality {done}/{manifest.get('chunk_count')}" if done else "fast"
    return "quality" if manifest.get("embedder") else None  # a version with an embedder holds vectors.npy


@dataclass
class UpgradeStatus:
    """What /health shows about the background upgrade of the served version."""

    version: str
    total: int
    done: int = 0
    state: str = "pending"  # pending | upgrading | waiting (another process holds the lock) | failed | complete
    error: str | None = None
    rate_per_s: float | None = None
    eta_s: float | None = None
    started: float = field(default_factory=time.monotonic)
    done_at_start: int = 0

    def advance(self, done: int) -> None:
        self.done = done
        elapsed = time.monotonic() - self.started
        if elapsed > 0 and done > self.done_at_start:
            self.rate_per_s = round((done - self.done_at_start) / elapsed, 2)
            self.eta_s = round((self.total - done) / self.rate_per_s, 1)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "state": self.state, "done": self.done, "total": self.total,
                "rate_per_s": self.rate_per_s, "eta_s": self.eta_s, "error": self.error}


# ---- the upgrade ----------------------------------------------------------------------------------------
class UpgradeBusy(KBError):
    """Another process is upgrading this version (it holds the lock)."""


class UpgradeStopped(KBError):
    """The caller stopped the upgrade (the version is no longer served); its journal keeps what was done."""


def _try_lock(version_dir: Path) -> int:
    fd = os.open(version_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UpgradeBusy(f"{version_dir.name} is being upgraded by another process") from None
    return fd


def _lock_and_read(kb: KnowledgeBase, version: str) -> tuple[int, Path, dict[str, Any]]:
    """Take ``version``'s upgrade lock, then read its manifest (under the lock: another process may just have
    finished it). Blocking file I/O: run it in a thread. Raises UpgradeBusy, KBError (the lock is released)."""
    d = kb.version_dir(version)
    fd = _try_lock(d)
    try:
        return fd, d, kb.read_manifest(version)
    except BaseException:
        os.close(fd)
        raise


def _chunks_to_upgrade(version_dir: Path, manifest: dict[str, Any],
                       loaded: KBVersion | None) -> tuple[list[str], list[str]]:
    """(ids, texts) of a version's chunks: from ``loaded`` (the version as served) when its chunks are the
    ones the manifest records — its private copy was checked against that same size + sha256 when it was
    loaded — else read from ``chunks.jsonl`` and checked now. Reads files: run it in a thread."""
    expect = (manifest.get("files") or {}).get("chunks.jsonl")
    if (loaded is not None and loaded.path == version_dir and expect is not None
            and (loaded.manifest.get("files") or {}).get("chunks.jsonl") == expect
            and len(loaded.chunks) == manifest.get("chunk_count")):
        return [c.id for c in loaded.chunks.lights()], [c.text for c in loaded.chunks]
    return _read_chunks(version_dir, manifest)


def _read_chunks(version_dir: Path, manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(ids, texts) of a version's chunks, checked against the manifest's digest."""
    from gateway.kb import file_digest

    path = version_dir / "chunks.jsonl"
    expect = (manifest.get("files") or {}).get("chunks.jsonl")
    if expect is not None and file_digest(path) != {k: expect.get(k) for k in ("bytes", "sha256")}:
        raise KBCorrupt(f"KB version {version_dir.name}: chunks.jsonl does not match its manifest")
    ids, texts = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                ids.append(record["id"])
                texts.append(record["text"])
    return ids, texts


async def upgrade_version(kb: KnowledgeBase, version: str, embedder: Embedder, *, batch_size: int = 16,
                          progress: Progress | None = None, keep_going: Callable[[], bool] | None = None,
                          loaded: KBVersion | None = None) -> dict[str, Any]:
    """Embed ``version``'s quality vectors (resuming from its journal), then commit them
    (:meth:`KnowledgeBase.finish_upgrade`). Returns the version's manifest (already ``quality``: unchanged).
    ``loaded``: the version as a gateway serves it; its chunks are reused when they are the manifest's.

    Raises :class:`UpgradeBusy` (another process upgrades it), :class:`UpgradeStopped` (``keep_going()``
    turned false between batches), :class:`ModelMismatch` (the version is for another quality model),
    KBError / OSError / the embedder's errors (the journal keeps what was done)."""
    progress = progress or (lambda stage, done, total: None)
    fd, d, manifest = await asyncio.to_thread(_lock_and_read, kb, version)
    try:
        if not is_fast_phase(manifest):
            return manifest
        made_by = (manifest.get("embedder") or {}).get("name")
        if made_by != embedder_id(embedder):
            raise ModelMismatch(f"KB version {version} is for quality model {made_by}, not {embedder_id(embedder)}")
        ids, texts = await asyncio.to_thread(_chunks_to_upgrade, d, manifest, loaded)
        journal = kb.upgrade_journal(version, made_by, embedder.dim)
        have = await asyncio.to_thread(journal.load)
        todo = [i for i, cid in enumerate(ids) if cid not in have]
        rows: dict[str, np.ndarray] = dict(have)
        done = len(ids) - len(todo)
        progress("upgrade", done, len(ids))
        for start in range(0, len(todo), batch_size):
            if keep_going is not None and not keep_going():
                raise UpgradeStopped(f"upgrade of {version} stopped at {done}/{len(ids)}")
            idx = todo[start:start + batch_size]
            out = await embedder.embed_passages([texts[i] for i in idx])
            await asyncio.to_thread(journal.append, [ids[i] for i in idx], out)
            for j, i in enumerate(idx):
                rows[ids[i]] = out[j]
            done += len(idx)
            progress("upgrade", done, len(ids))
        matrix = np.vstack([rows[cid] for cid in ids]).astype(np.float32)
        new = await asyncio.to_thread(kb.finish_upgrade, version, matrix, embedder)
        await asyncio.to_thread(journal.clear)
        return new
    finally:
        os.close(fd)  # releases the lock


async def wait_or_upgrade(kb: KnowledgeBase, version: str, embedder: Embedder, *, batch_size: int = 16,
                          progress: Progress | None = None, poll_s: float = POLL_S) -> dict[str, Any]:
    """Until ``version`` has its quality vectors: upgrade it here, or wait for the process that holds the
    lock (a gateway) — taking over if that process dies. For ``ingest --wait-quality`` / ``kb upgrade``."""
    while True:
        try:
            return await upgrade_version(kb, version, embedder, batch_size=batch_size, progress=progress)
        except UpgradeBusy:
            manifest = await asyncio.to_thread(kb.read_manifest, version)
            if progress is not None:
                done = await asyncio.to_thread(quality_done, kb, version, manifest)
                progress("upgrade", done, int(manifest.get("chunk_count") or 0))
            if not is_fast_phase(manifest):
                return manifest
            await asyncio.sleep(poll_s)


# ---- inside a gateway -----------------------------------------------------------------------------------
class ProgressLog:
    """Progress into an :class:`UpgradeStatus` and a ``kb_upgrade_progress`` log line per 10% (rate, ETA)."""

    def __init__(self, status: UpgradeStatus) -> None:
        self.status = status
        self.last_decile = -1

    def __call__(self, stage: str, done: int, total: int) -> None:
        st = self.status
        if st.state != "upgrading":
            st.state, st.started, st.done_at_start = "upgrading", time.monotonic(), done
        st.advance(done)
        decile = 10 * done // total if total else 10
        if decile != self.last_decile:
            self.last_decile = decile
            log.info("kb upgrade progress", extra={"event": "kb_upgrade_progress", "kb_version": st.version,
                                                    "done": done, "total": total, "rate_per_s": st.rate_per_s,
                                                    "eta_s": st.eta_s})


def manifest_or_none(kb: KnowledgeBase, version: str) -> dict[str, Any] | None:
    try:
        return kb.read_manifest(version)
    except KBError:
        return None


def health_view(state: AppState) -> dict[str, Any]:
    """``components.kb`` additions: ``vectors`` (label), ``serving_vectors`` (the set answering) and
    ``upgrade`` (the background upgrade's progress, rate, ETA, error)."""
    kb = state.kb
    if kb is None or kb.vectors_tier is None:
        return {}
    label = vectors_label(state.kb_store, kb.version, kb.manifest)
    status = state.upgrade if state.upgrade is not None and state.upgrade.version == kb.version else None
    out: dict[str, Any] = {"vectors": label, "serving_vectors": kb.vectors_tier}
    if status is None and kb.vectors_tier == "fast":  # the upgrade task has not looked at it yet
        status = UpgradeStatus(kb.version, total=len(kb.chunks), done=quality_done(state.kb_store, kb.version,
                                                                                  kb.manifest))
    if status is not None and (kb.vectors_tier == "fast" or status.state == "complete"):
        out["upgrade"] = status.as_dict()
    return out


__all__ = ["FAST_VECTORS", "UpgradeBusy", "UpgradeStatus", "check_fast_set", "health_view", "quality_done",
           "upgrade_version", "vectors_label", "wait_or_upgrade"]
