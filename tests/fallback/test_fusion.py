"""Rank fusion of the vector and keyword halves."""
from __future__ import annotations

import pytest

from fallback.documents import Chunk
from fallback.fusion import blend, rrf


def _ranking(ids: str, retriever: str, scores: list[float] | None = None) -> list[Chunk]:
    scores = scores or [10.0 - i for i in range(len(ids))]
    return [Chunk(id=c, text=c).scored(s, retriever) for c, s in zip(ids, scores)]


def test_rrf_ranks_a_chunk_both_retrievers_found_above_one_either_ranked_first():
    vector, keyword = _ranking("abc", "vector"), _ranking("dbe", "bm25")
    fused = rrf([vector, keyword], 5, k=60)
    assert [c.id for c in fused][:3] == ["b", "a", "d"]
    assert {c.retriever for c in fused} == {"hybrid"} and len(fused) == 5
    assert fused[0].score == pytest.approx((2 / 62) / (2 / 61))


def test_rrf_of_identical_rankings_scores_the_first_one_and_keeps_the_order():
    fused = rrf([_ranking("xyz", "vector"), _ranking("xyz", "bm25")], 2)
    assert [c.id for c in fused] == ["x", "y"] and fused[0].score == pytest.approx(1.0)


def test_blend_normalises_each_side_so_bm25_magnitudes_do_not_dominate():
    vector = _ranking("ab", "vector", [0.9, 0.1])
    keyword = _ranking("ba", "bm25", [40.0, 39.0])  # b barely ahead on keywords, far behind on vectors
    assert [c.id for c in blend(vector, keyword, 2, alpha=0.5)] == ["a", "b"]
    assert [c.id for c in blend(vector, keyword, 2, alpha=0.0)] == ["b", "a"]
    assert blend([], keyword, 1, alpha=0.5)[0].id == "b"
