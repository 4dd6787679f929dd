"""The embedded store's filters and the keyword index's filters agree on the same chunks."""
from __future__ import annotations

import pytest

from fallback.bm25 import KeywordIndex
from fallback.documents import Chunk
from fallback.filters import matches

CHUNKS = [
    Chunk(id="a", text="alpha tea leaves", source="a.md", title="A", doc_id="3",
          metadata={"lang": "en", "tags": ["x", "y"], "n": 3}),
    Chunk(id="b", text="beta tea leaves", source="b.md", title="B", metadata={"lang": "de", "tags": ["y"], "n": 4}),
    Chunk(id="c", text="gamma tea leaves", source="c.md", title="C", metadata={"lang": "en", "n": True}),
]


@pytest.mark.parametrize("filters,expected", [
    ({"source": "a.md"}, {"a"}),
    ({"source": ["a.md", "c.md"]}, {"a", "c"}),
    ({"lang": "en"}, {"a", "c"}),
    ({"lang": "en", "source": "c.md"}, {"c"}),
    ({"tags": "y"}, {"a", "b"}),
    ({"tags": ["x"]}, {"a"}),
    ({"n": 3}, {"a"}),
    ({"n": "3"}, set()),
    ({"n": 1}, set()),
    ({"n": 3.0}, set()),
    ({"doc_id": 3}, set()),
    ({"missing": "v"}, set()),
])
def test_store_and_keyword_filters_agree(filters, expected):
    assert {c.id for c in CHUNKS if matches(c, filters)} == expected
    index = KeywordIndex.build(CHUNKS)
    assert {c.id for c in index.search("tea leaves", 10, filters=filters)} == expected
