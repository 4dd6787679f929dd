"""Retrieval metrics over a golden set: Precision@k, Recall@k, nDCG@k and MRR.

Judgments are per document (a chunk's ``source`` path), graded or binary: grade > 0 is relevant and
nDCG uses the grade as its gain (trec_eval's linear gain, log2 discount). A run maps each query id to
its ranked documents; repeated documents (several chunks of one file) count once, at their best rank.
Queries without any relevant document are left out of the averages, as trec_eval does.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fallback.documents import Chunk

Qrel = Mapping[str, float]  # doc id (source path) -> grade
Qrels = Mapping[str, Qrel]  # query id -> judgments
Run = Mapping[str, Sequence[str]]  # query id -> ranked doc ids

DEFAULT_CUTOFFS = {"precision": 5, "recall": 5, "ndcg": 10}


def _dedupe(ranked: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ranked))  # first occurrence of each, in order


def _relevant(qrel: Qrel) -> set[str]:
    return {d for d, g in qrel.items() if g > 0}


def precision_at_k(ranked: Sequence[str], qrel: Qrel, k: int) -> float:
    """Relevant documents in the top ``k``, divided by ``k`` (a short ranking is not rewarded)."""
    if k <= 0:
        raise ValueError("k must be positive")
    rel = _relevant(qrel)
    return sum(d in rel for d in _dedupe(ranked)[:k]) / k


def recall_at_k(ranked: Sequence[str], qrel: Qrel, k: int) -> float:
    """Share of the relevant documents found in the top ``k`` (0.0 when none are relevant)."""
    rel = _relevant(qrel)
    if not rel:
        return 0.0
    return sum(d in rel for d in _dedupe(ranked)[:k]) / len(rel)


def ndcg_at_k(ranked: Sequence[str], qrel: Qrel, k: int) -> float:
    """DCG of the top ``k`` (gain = grade, discount = log2(rank + 1)) over the ideal DCG."""
    gains = [float(qrel.get(d, 0)) for d in _dedupe(ranked)[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)
    ideal = sorted((float(g) for g in qrel.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def mrr(ranked: Sequence[str], qrel: Qrel, k: int | None = None) -> float:
    """Reciprocal rank of the first relevant document (within the top ``k`` if given), else 0.0."""
    rel = _relevant(qrel)
    docs = _dedupe(ranked)
    for i, d in enumerate(docs if k is None else docs[:k]):
        if d in rel:
            return 1.0 / (i + 1)
    return 0.0


def evaluate(run: Run, qrels: Qrels, *, precision_k: int = 5, recall_k: int = 5, ndcg_k: int = 10,
             ) -> dict:
    """Mean metrics of ``run`` over the judged queries, plus per-query values.

    A judged query missing from ``run`` scores 0 everywhere. Returns ``{"queries": n,
    "precision@5": …, "recall@5": …, "ndcg@10": …, "mrr": …, "per_query": {qid: {...}}}`` (the
    keys follow the cut-offs given).
    """
    names = (f"precision@{precision_k}", f"recall@{recall_k}", f"ndcg@{ndcg_k}", "mrr")
    per_query: dict[str, dict[str, float]] = {}
    for qid, qrel in qrels.items():
        if not _relevant(qrel):
            continue
        ranked = run.get(qid, ())
        per_query[qid] = dict(zip(names, (precision_at_k(ranked, qrel, precision_k),
                                          recall_at_k(ranked, qrel, recall_k),
                                          ndcg_at_k(ranked, qrel, ndcg_k), mrr(ranked, qrel))))
    n = len(per_query)
    means = {m: (sum(v[m] for v in per_query.values()) / n if n else 0.0) for m in names}
    return {"queries": n, **means, "per_query": per_query}


@dataclass(frozen=True, slots=True)
class GoldenQuery:
    id: str
    query: str
    relevant: dict[str, float]


def load_golden(path: Path | str) -> list[GoldenQuery]:
    """Read a golden set: JSON lines ``{"id", "query", "relevant": {source: grade}}``.

    Raises ``ValueError`` naming the line for a malformed record or a duplicate id.
    """
    out: list[GoldenQuery] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                q = GoldenQuery(str(d["id"]), str(d["query"]),
                                {str(k): float(v) for k, v in dict(d["relevant"]).items()})
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: malformed golden record: {exc}") from exc
            if q.id in seen:
                raise ValueError(f"{path}:{n}: duplicate query id {q.id!r}")
            seen.add(q.id)
            out.append(q)
    return out


def qrels_of(golden: Iterable[GoldenQuery]) -> dict[str, dict[str, float]]:
    return {q.id: dict(q.relevant) for q in golden}


def ranked_sources(chunks: Iterable[Chunk]) -> list[str]:
    """A chunk ranking as a document ranking: each source once, at its best rank."""
    return _dedupe(c.source for c in chunks)


def format_table(results: Mapping[str, Mapping[str, object]]) -> str:
    """Markdown table of several ``evaluate`` results, one row per named run."""
    first = next(iter(results.values()), {})
    metrics = [k for k in first if k not in ("queries", "per_query")]
    lines = ["| run | queries | " + " | ".join(metrics) + " |",
             "|---|---:|" + "---:|" * len(metrics)]
    for name, r in results.items():
        scores = " | ".join(f"{float(r[m]):.3f}" for m in metrics)  # type: ignore[arg-type]
        lines.append(f"| {name} | {r['queries']} | {scores} |")
    return "\n".join(lines)
