"""Fusing the vector and keyword rankings of one KB version into one (the normal, hybrid path).

Two methods, compared on both golden sets by ``python -m bench.embedders`` (README "Retrieval quality"):

* ``rrf`` — reciprocal rank fusion (Cormack et al. 2009): ``sum 1 / (k + rank)`` over the lists a chunk
  appears in. Needs no score calibration, so it is robust to BM25's unbounded scores.
* ``blend`` — min-max normalise each list's scores to [0, 1] and mix ``alpha * vector + (1 - alpha) *
  keyword`` (Weaviate's ``relativeScoreFusion``); a chunk missing from a list gets 0 there.

The fused score is reported in [0, 1]: RRF is divided by its maximum (first in every list).
"""
from __future__ import annotations

from collections.abc import Sequence

from fallback.documents import Chunk

RETRIEVER = "hybrid"


def rrf(rankings: Sequence[Sequence[Chunk]], top_k: int, *, k: int = 60) -> list[Chunk]:
    """Reciprocal rank fusion of best-first chunk lists; ties keep the first list's order."""
    scores: dict[str, float] = {}
    first: dict[str, Chunk] = {}
    for ranking in rankings:
        for rank, chunk in enumerate(ranking):
            scores[chunk.id] = scores.get(chunk.id, 0.0) + 1.0 / (k + rank + 1)
            first.setdefault(chunk.id, chunk)
    best = (len(rankings) / (k + 1)) or 1.0
    order = sorted(scores, key=lambda cid: -scores[cid])[:top_k]
    return [first[cid].scored(scores[cid] / best, RETRIEVER) for cid in order]


def blend(vector: Sequence[Chunk], keyword: Sequence[Chunk], top_k: int, *, alpha: float = 0.5) -> list[Chunk]:
    """Relative-score fusion: ``alpha`` weights the vector side (1.0 = vector only, 0.0 = keyword only)."""
    scores: dict[str, float] = {}
    first: dict[str, Chunk] = {}
    for ranking, weight in ((vector, alpha), (keyword, 1.0 - alpha)):
        if not ranking:
            continue
        values = [c.score for c in ranking]
        lo, hi = min(values), max(values)
        for chunk in ranking:
            norm = (chunk.score - lo) / (hi - lo) if hi > lo else 1.0
            scores[chunk.id] = scores.get(chunk.id, 0.0) + weight * norm
            first.setdefault(chunk.id, chunk)
    order = sorted(scores, key=lambda cid: -scores[cid])[:top_k]
    return [first[cid].scored(scores[cid], RETRIEVER) for cid in order]
