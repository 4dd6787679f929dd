"""``python -m bench.bm25_fields``: how much the keyword index's page-outline field weighs, chosen on half a
golden set and reported on the other half.

For both golden sets (``bench.embedders.CORPORA``), the keyword fallback (``KeywordIndex.search``, outline on)
at outline weights 0 / 0.2 / 0.3 / 0.4 / 0.5, MRR on the questions with an even position (A: where the weight
is chosen), an odd one (B: held out) and all; and the normal hybrid path (MiniLM vectors of the chunks fused by
RRF with the keyword half, outline off as the gateway runs it). Chunk vectors are bench.embedders' cache
(embedded on first use). Writes ``bench/results/bm25_fields.md``.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

import fallback.bm25 as bm25
from bench.embedders import CACHE, CORPORA, DEPTH, _chunks
from fallback import fusion
from fallback.evaluation import evaluate, load_golden, qrels_of, ranked_sources

WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5)
OUT = Path(__file__).resolve().parent / "results" / "bm25_fields.md"


def _mrr(runs: dict[str, list[str]], qrels: dict[str, Any], ids: set[str]) -> float:
    return float(evaluate({k: v for k, v in runs.items() if k in ids}, {k: v for k, v in qrels.items() if k in ids})["mrr"])


async def _vectors(emb: Any, chunks: list[Any]) -> np.ndarray:
    key = hashlib.sha256((emb.model_id + "\0" + "\0".join(c.id for c in chunks)).encode()).hexdigest()[:20]
    path = CACHE / f"{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = np.vstack([await emb.embed_passages([c.text for c in chunks[i:i + 16]]) for i in range(0, len(chunks), 16)])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


async def run() -> list[str]:
    from gateway.upstreams.onnx_embedder import MiniLMEmbedder

    emb = MiniLMEmbedder()
    lines = [f"# Keyword index: outline field weight ({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC)", "",
             "MRR; A = questions at even positions (the weight is chosen there), B = odd (held out).", "",
             "| golden set | outline weight | fallback A | fallback B | fallback all | hybrid all |",
             "|---|---:|---:|---:|---:|---:|"]
    default = bm25.OUTLINE_WEIGHT
    try:
        for corpus, (_, golden_path) in CORPORA.items():
            chunks = _chunks(corpus)
            golden = load_golden(golden_path)
            qrels = qrels_of(golden)
            ids = [q.id for q in golden]
            halves = (set(ids[0::2]), set(ids[1::2]), set(ids))
            vectors = await _vectors(emb, chunks)
            index = bm25.KeywordIndex.build(chunks)
            vec: dict[str, list[Any]] = {}
            for q in golden:
                scores = vectors @ await emb.embed_query(q.query)
                top = np.argsort(-scores)[:DEPTH]
                vec[q.id] = [chunks[i].scored(float(scores[i]), "vector") for i in top]
            hybrid = {q.id: ranked_sources(fusion.rrf([vec[q.id], index.search(q.query, DEPTH, outline=False)], DEPTH))
                      for q in golden}
            for weight in WEIGHTS:
                bm25.OUTLINE_WEIGHT = weight
                kw = {q.id: ranked_sources(index.search(q.query, DEPTH)) for q in golden}
                a, b, both = (_mrr(kw, qrels, h) for h in halves)
                mark = " (default)" if weight == default else ""
                lines.append(f"| {Path(golden_path).name} | {weight}{mark} | {a:.3f} | {b:.3f} | {both:.3f} | "
                             f"{_mrr(hybrid, qrels, halves[2]):.3f} |")
    finally:
        bm25.OUTLINE_WEIGHT = default
        await emb.close()
    return lines


def main() -> None:
    lines = asyncio.run(run())
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
