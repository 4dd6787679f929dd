"""The small Protocols every upstream backend implements.

Backends raise :class:`resilience.UpstreamError` for upstream failures (with status / retryable /
retry_after_s / caller_fault filled in) and let timeouts and cancellation propagate: the guard around
them owns timeouts, retries and breakers. They never swallow errors into empty results.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol, Sequence, runtime_checkable

import numpy as np

from fallback.documents import Chunk


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int | None
    max_query_tokens: int | None
    """Queries are cut to this many tokens before embedding (None: the server truncates)."""

    def truncate_query(self, text: str) -> tuple[str, int]:
        """``(text cut to max_query_tokens of this model's tokenizer, its token count)``; CPU-bound."""

    async def embed_query(self, text: str, *, request_id: str | None = None) -> np.ndarray:
        """One normalised float32 vector for a search query (``request_id`` sent upstream if it can be)."""

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 matrix for documents (used by ingest)."""

    async def close(self) -> None: ...


@runtime_checkable
class VectorStore(Protocol):
    name: str

    async def search(self, vector: np.ndarray | None, top_k: int, *, query_text: str | None = None,
                     filters: dict[str, Any] | None = None) -> list[Chunk]:
        """Nearest chunks, best first, ``retriever="vector"``. ``vector`` None → store vectorizes text."""

    async def count(self) -> int: ...

    def iterate(self) -> AsyncIterator[Chunk]:
        """Every chunk of the active collection/version (for keyword-index sync)."""

    async def close(self) -> None: ...


@dataclass
class Generation:
    text: str
    model: str
    stop_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class LLM(Protocol):
    name: str

    async def generate(self, question: str, chunks: Sequence[Chunk], *, model: str | None = None,
                       request_id: str | None = None) -> Generation:
        ...

    def stream(self, question: str, chunks: Sequence[Chunk], *, model: str | None = None,
               request_id: str | None = None) -> AsyncIterator[str]:
        """Text deltas. Raises UpstreamError mid-stream if the upstream cuts or errors."""

    async def close(self) -> None: ...
