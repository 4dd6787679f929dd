"""The small Protocols every upstream backend implements.

Backends raise :class:`resilience.UpstreamError` for upstream failures (with status / retryable /
retry_after_s / caller_fault filled in) and let timeouts and cancellation propagate: the guard around
them owns timeouts, retries and breakers. They never swallow errors into empty results.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Protocol, Sequence, runtime_checkable

import numpy as np

from fallback.chunktable import ChunkTable
from fallback.documents import Chunk


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int | None

    @property
    def max_query_tokens(self) -> int | None:
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
    """Where the gateway searches. Two kinds, told apart by ``serves_kb_versions`` (never by name):

    - True (the embedded store): it serves the vectors of the local KB version handed to :meth:`load`;
    - False (Weaviate): it serves its own collection, which ingest fills (it is also an
      :class:`IngestTarget`) and ``kb sync`` mirrors into a local version for the keyword index.
    """

    name: str
    serves_kb_versions: bool

    async def connect(self) -> None:
        """Open connections and check the store is live (idempotent; nothing to do in-process).
        Raises UpstreamError or TimeoutError."""

    def load(self, version: str, version_dir: Path, chunks: ChunkTable, vectors: np.ndarray | None = None,
             *, unavailable: str | None = None, tier: str = "quality") -> None:
        """Serve KB version ``version``: ``vectors`` as loaded (verified, private copy) by ``gateway.kb``;
        ``unavailable`` says why there are none to serve (searches then raise UpstreamError); ``tier``:
        ``fast`` for a progressive version's fast-tier set (``gateway.progressive``). A no-op unless
        ``serves_kb_versions``. Raises ValueError when the vectors don't fit the chunks."""

    async def search(self, vector: np.ndarray | None, top_k: int, *, query_text: str | None = None,
                     filters: dict[str, Any] | None = None) -> list[Chunk]:
        """Nearest chunks, best first, ``retriever="vector"``. ``vector`` None → store vectorizes text."""

    async def count(self) -> int: ...

    def iterate(self) -> AsyncIterator[Chunk]:
        """Every chunk of the active collection/version (for keyword-index sync)."""

    async def close(self) -> None: ...


@runtime_checkable
class IngestTarget(Protocol):
    """A store whose own collection ingest fills, besides the KB version on disk (Weaviate)."""

    async def ensure_collection(self, vectorizer: bool = False) -> None:
        """Create the collection if missing; ``vectorizer``: the store embeds the text itself."""

    async def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray | None) -> None:
        """Insert or overwrite ``chunks`` (row i of ``vectors`` is chunk i; None: the store embeds)."""


@dataclass
class Generation:
    text: str
    model: str
    stop_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)


class DeltaStream(Protocol):
    """An answer's text deltas (``async for``); :meth:`aclose` ends it early and releases the connection."""

    def __aiter__(self) -> DeltaStream: ...

    async def __anext__(self) -> str: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class LLM(Protocol):
    name: str

    async def generate(self, question: str, chunks: Sequence[Chunk], *, model: str | None = None,
                       request_id: str | None = None) -> Generation:
        ...

    def stream(self, question: str, chunks: Sequence[Chunk], *, model: str | None = None,
               request_id: str | None = None) -> DeltaStream:
        """Text deltas. Raises UpstreamError mid-stream if the upstream cuts or errors."""

    async def close(self) -> None: ...
