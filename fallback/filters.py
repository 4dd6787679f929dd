"""Metadata filters shared by every local retriever: ``{field: value | [values]}``, all must match."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fallback.documents import Chunk

FILTERABLE = ("source", "title", "doc_id")


def _same(a: Any, b: Any) -> bool:
    # Exact types, like the keyword index: 1 matches neither True nor "1".
    return type(a) is type(b) and a == b


def matches(chunk: Chunk, filters: Mapping[str, Any]) -> bool:
    """True when every filter field equals the value (or one of the listed values).

    A list-valued metadata field matches when any of its elements does (as in the keyword index).
    """
    for field, wanted in filters.items():
        have = getattr(chunk, field) if field in FILTERABLE else chunk.metadata.get(field)
        haves = have if isinstance(have, (list, tuple)) else [have]
        wanteds = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
        if not any(_same(h, w) for h in haves for w in wanteds):
            return False
    return True
