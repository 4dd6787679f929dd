"""Quality gate: evaluate a new KB version on a golden set before it is activated.

``rag-sidecar ingest PATH --golden FILE [--min-mrr X] [--max-mrr-drop D]`` builds the version inactive,
runs the golden questions against it exactly as the gateway would (query embedding, vector top-k of
this version's vectors, fused with its keyword index per ``retrieval.*``; and the keyword index alone,
the fallback), stores the figures in the version's manifest (``evaluation``), and activates it only if

* its normal-path MRR is at least ``--min-mrr`` (when given), and
* it has not dropped more than ``--max-mrr-drop`` (default 0.02) below the active version's MRR on the
  same golden file (compared only when the active version was evaluated on a file with the same sha256).

Otherwise it raises :class:`QualityGateFailed`; the old version stays active and the new one is kept,
inactive, for inspection (``kb list`` shows its figures; ``kb activate`` can still force it).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fallback import fusion
from fallback.evaluation import evaluate, load_golden, qrels_of, ranked_sources
from gateway.kb import KBError, KnowledgeBase, _atomic_write_text

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.upstreams.base import Embedder

DEPTH = 30
METRICS = ("precision@5", "recall@5", "ndcg@10", "mrr")


class QualityGateFailed(KBError):
    """The new version regressed on the golden set; it was not activated. ``evaluation`` has the figures."""

    def __init__(self, message: str, version: str, evaluation: dict[str, Any]) -> None:
        super().__init__(message)
        self.version = version
        self.evaluation = evaluation


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def evaluate_version(kb: KnowledgeBase, version: str, golden_path: Path, settings: Settings,
                           embedder: Embedder | None) -> dict[str, Any]:
    """Retrieval metrics of ``version`` on ``golden_path``: ``{"normal": {...}, "keyword_fallback": {...}}``
    (P@5, R@5, nDCG@10, MRR), plus the golden file's name, sha256 and question count."""
    loaded = kb.load(version)
    if loaded is None:
        raise KBError(f"unknown KB version: {version}")
    golden = load_golden(golden_path)
    index = loaded.keyword_index
    vectors_path = loaded.path / "vectors.npy"
    vectors = np.load(vectors_path, mmap_mode="r") if embedder is not None and vectors_path.exists() else None
    chunks = list(loaded.chunks)
    cfg = settings.retrieval
    normal: dict[str, list[str]] = {}
    keyword: dict[str, list[str]] = {}
    for q in golden:
        keyword[q.id] = ranked_sources(index.search(q.query, DEPTH)) if index is not None else []
        kw = index.search(q.query, DEPTH, outline=False) if index is not None else []  # hybrid's keyword half
        if vectors is None or embedder is None:  # keyword-only KB: the keyword search is the normal path
            normal[q.id] = keyword[q.id]
            continue
        qv = await embedder.embed_query(q.query)
        scores = np.asarray(vectors @ qv)
        top = np.argsort(-scores)[:DEPTH]
        vec = [chunks[i].scored(float(scores[i]), "vector") for i in top]
        if not cfg.hybrid or index is None:
            ranked = vec
        elif cfg.fusion == "blend":
            ranked = fusion.blend(vec, kw, DEPTH, alpha=cfg.blend_alpha)
        else:
            ranked = fusion.rrf([vec, kw], DEPTH, k=cfg.rrf_k)
        normal[q.id] = ranked_sources(ranked)
    qrels = qrels_of(golden)

    def summary(run: dict[str, list[str]]) -> dict[str, float]:
        res = evaluate(run, qrels)
        return {m: round(float(res[m]), 4) for m in METRICS}

    return {"golden": Path(golden_path).name, "golden_sha256": _sha256(golden_path), "queries": len(golden),
            "normal": summary(normal), "keyword_fallback": summary(keyword), "evaluated_at": time.time()}


def store_evaluation(kb: KnowledgeBase, version: str, evaluation: dict[str, Any]) -> None:
    """Write ``evaluation`` into the version's manifest (atomic replace)."""
    path = kb.versions_dir / version / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["evaluation"] = evaluation
    _atomic_write_text(path, json.dumps(manifest, indent=2))


def gate(kb: KnowledgeBase, version: str, evaluation: dict[str, Any], *, min_mrr: float | None,
         max_drop: float) -> None:
    """Raise :class:`QualityGateFailed` if ``evaluation`` is below ``min_mrr`` or more than ``max_drop``
    below the active version's evaluation on the same golden file."""
    mrr = evaluation["normal"]["mrr"]
    if min_mrr is not None and mrr < min_mrr:
        raise QualityGateFailed(f"KB version {version} not activated: MRR {mrr:.3f} on {evaluation['golden']} "
                                f"is below --min-mrr {min_mrr:.3f}", version, evaluation)
    active = kb.active_version()
    if active is None or active == version:
        return
    try:
        before = json.loads((kb.versions_dir / active / "manifest.json").read_text()).get("evaluation") or {}
    except (OSError, ValueError):
        return
    if before.get("golden_sha256") != evaluation["golden_sha256"]:
        return
    old = float(before["normal"]["mrr"])
    if mrr < old - max_drop:
        raise QualityGateFailed(f"KB version {version} not activated: MRR {mrr:.3f} on {evaluation['golden']} "
                                f"dropped {old - mrr:.3f} below the active {active} ({old:.3f}; allowed drop "
                                f"{max_drop:.3f})", version, evaluation)


def evaluation_summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The short form shown by ``kb list`` and /health: golden file, MRR normal / keyword fallback."""
    ev = manifest.get("evaluation")
    if not ev:
        return None
    return {"golden": ev.get("golden"), "queries": ev.get("queries"), "normal": ev.get("normal"),
            "keyword_fallback": ev.get("keyword_fallback"), "evaluated_at": ev.get("evaluated_at")}
