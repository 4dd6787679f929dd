"""Metadata filters shared by every local retriever: ``{field: value | [values]}``, all must match."""
from __future__ import annotations

from typing import Any

from fallback.documents import Chunk

FILTERABLE = ("source", "title", "doc_id")


def matches(chunk: Chunk, filters: dict[str, Any]) -> bool:
    """True when every filter field equals the value (or one of the listed values)."""
    for field, wanted in filters.items():
        have = getattr(chunk, field) if field in FILTERABLE else chunk.metadata.get(field)
        if isinstance(wanted, (list, tuple, set)):
            if have not in wanted:
                return False
        elif have != wanted:
            return False
    return True
