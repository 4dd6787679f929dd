"""Retrieval metrics on hand-computed examples, and the shipped golden set's integrity."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from fallback.documents import Chunk
from fallback.evaluation import (evaluate, format_table, load_golden, mrr, ndcg_at_k, precision_at_k,
                                 ranked_sources, recall_at_k)

from .conftest import CORPUS

# "a" appears twice (two chunks of one doc): it counts once, at rank 1 → ranking a, x, b, y
RANKED = ["a", "x", "b", "a", "y"]
GRADED = {"a": 2, "b": 1, "c": 1, "z": 0}


def test_precision_divides_by_k() -> None:
    assert precision_at_k(RANKED, GRADED, 1) == 1.0
    assert precision_at_k(RANKED, GRADED, 3) == pytest.approx(2 / 3)
    assert precision_at_k(RANKED, GRADED, 5) == pytest.approx(2 / 5)  # 4 distinct docs, 2 relevant, over k=5
    with pytest.raises(ValueError):
        precision_at_k(RANKED, GRADED, 0)


def test_recall_counts_relevant_docs_found() -> None:
    assert recall_at_k(RANKED, GRADED, 1) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, GRADED, 5) == pytest.approx(2 / 3)  # "c" never retrieved; "z" is grade 0
    assert recall_at_k(RANKED, {"z": 0}, 5) == 0.0


def test_ndcg_uses_grades_as_gains() -> None:
    # DCG@3 = 2/log2(2) + 0 + 1/log2(4) = 2.5; ideal = 2/log2(2) + 1/log2(3) + 1/log2(4)
    ideal = 2 + 1 / math.log2(3) + 0.5
    assert ndcg_at_k(RANKED, GRADED, 3) == pytest.approx(2.5 / ideal)
    assert ndcg_at_k(["a", "b", "c"], GRADED, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["b", "a"], GRADED, 2) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert ndcg_at_k(["x"], GRADED, 10) == 0.0


def test_mrr_is_the_reciprocal_rank_of_the_first_relevant_doc() -> None:
    assert mrr(RANKED, GRADED) == 1.0
    assert mrr(["x", "y", "b"], GRADED) == pytest.approx(1 / 3)
    assert mrr(["x", "y", "b"], GRADED, k=2) == 0.0
    assert mrr(["x", "z"], GRADED) == 0.0


def test_evaluate_averages_judged_queries_and_scores_missing_runs_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 2, "c": 1}, "q3": {"d": 0}}  # q3 has nothing relevant: left out
    run = {"q1": ["a", "x"], "q3": ["d"]}  # q2 missing from the run

    result = evaluate(run, qrels, precision_k=2, recall_k=2, ndcg_k=2)
    assert result["queries"] == 2
    assert result["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert result["recall@2"] == pytest.approx((1 + 0) / 2)
    assert result["ndcg@2"] == pytest.approx(0.5)
    assert result["mrr"] == pytest.approx(0.5)
    assert result["per_query"]["q2"] == {"precision@2": 0.0, "recall@2": 0.0, "ndcg@2": 0.0, "mrr": 0.0}

    table = format_table({"normal": result, "keyword_fallback": result})
    assert table.splitlines()[0] == "| run | queries | precision@2 | recall@2 | ndcg@2 | mrr |"
    assert "| keyword_fallback | 2 | 0.250 | 0.500 | 0.500 | 0.500 |" in table


def test_ranked_sources_collapses_chunks_to_documents() -> None:
    chunks = [Chunk(id=str(i), text="t", source=s) for i, s in enumerate(["b.md", "a.md", "b.md", "c.md"])]
    assert ranked_sources(chunks) == ["b.md", "a.md", "c.md"]


def test_malformed_golden_lines_are_reported_with_their_line_number(tmp_path: Path) -> None:
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"id": "q1", "query": "x", "relevant": {"a.md": 2}}\n{"id": "q2", "query": "y"}\n')
    with pytest.raises(ValueError, match=r"g\.jsonl:2"):
        load_golden(bad)
    bad.write_text('{"id": "q1", "query": "x", "relevant": {}}\n' * 2)
    with pytest.raises(ValueError, match="duplicate"):
        load_golden(bad)


def test_shipped_golden_set_is_well_formed(golden) -> None:
    assert len(golden) >= 50
    for q in golden:
        assert q.query.strip() and set(q.relevant.values()) <= {1.0, 2.0}
        assert 2.0 in q.relevant.values(), q.id  # every question has a primary document
        for source in q.relevant:
            assert (CORPUS / source).is_file(), (q.id, source)
    assert len({q.query.casefold() for q in golden}) == len(golden)


def test_keyword_fallback_quality_on_the_golden_set(corpus_index, golden) -> None:
    """A floor, not a target: catches a broken analyzer or index (measured: MRR 0.90, nDCG@10 0.92)."""
    run = {q.id: ranked_sources(corpus_index.search(q.query, 20)) for q in golden}
    result = evaluate(run, {q.id: q.relevant for q in golden})
    assert result["mrr"] >= 0.75 and result["ndcg@10"] >= 0.75 and result["recall@5"] >= 0.8
