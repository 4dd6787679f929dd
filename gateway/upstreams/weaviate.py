"""Weaviate as the vector store, through the async ``weaviate-client`` 4.23.1.

Client retries, measured and read from the 4.23.1 source (``weaviate/retry.py``, ``connect/v4.py``):

- ``grpc_search`` and ``grpc_aggregate`` wrap the stub call in ``_Retry(4)``: on gRPC
  ``UNAVAILABLE`` only, they sleep 1, 2, 4, 8, 16, 32 s (6 attempts, ~63 s) and then raise.
  ``insert_many`` uses ``_Retry(2)`` (sleeps 1, 2, 4, 8 s: ~15 s). The count is hard-coded; no
  ``AdditionalConfig``/``Timeout``/``GrpcConfig`` option changes it, and the gRPC channel takes no
  interceptors. Every other gRPC code is raised at once (wrapped in ``WeaviateQueryError`` /
  ``WeaviateBatchError``, the ``AioRpcError`` kept as ``__context__``/``__cause__``).
- ``Timeout(init, query, insert)`` sets the *per-attempt* gRPC deadline (query for Search and
  Aggregate, insert for BatchObjects) and the httpx read timeout; the httpx connect timeout is a
  fixed 5 s. So ``Timeout`` bounds one attempt, never the retry loop.
- The async sleeps are ``asyncio.sleep``, the retry runs in the caller's task: cancelling the task
  (our guard's ``asyncio.timeout``) stops it, and no further attempt reaches the server (tested).
  The *sync* client sleeps with ``time.sleep``: run in a thread, it would keep retrying after the
  awaiting coroutine gave up — never use it behind a deadline.

What this module does about it: after ``connect()``, the Search/Aggregate/BatchObjects callables on
the client's gRPC stub (``client._connection._grpc_stub``, private in 4.23.1) are wrapped so that
``UNAVAILABLE`` leaves as a non-gRPC exception the client's ``_Retry`` does not catch; it surfaces
at once as ``UpstreamError(status=503)`` and our guard owns retries. If a client upgrade moves that
seam, ``connect()`` logs a warning and calls fall back to being bounded by the guard's deadline only
(the stub test for a fast 503 then fails loudly).

``connect()`` passes ``skip_init_checks=True`` because the init checks also GET pypi.org on every
connect (a version nag); it then checks liveness itself with ``client.is_live()`` (REST live + the
gRPC health ping).
"""
from __future__ import annotations

import asyncio
import logging
import uuid as uuid_lib
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, NoReturn, Sequence

import grpc
import httpx
import numpy as np
import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, HybridFusion, MetadataQuery
from weaviate.collections.classes.filters import _Filters
from weaviate.exceptions import (
    InsufficientPermissionsError,
    UnexpectedStatusCodeError,
    WeaviateBaseError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateInsertManyAllFailedError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
)
from weaviate.util import generate_uuid5

from fallback.chunktable import ChunkTable
from fallback.documents import Chunk
from gateway.config import VectorStoreConfig
from gateway.upstreams.httperrors import error_for_status
from resilience.errors import UpstreamError

log = logging.getLogger(__name__)

INSERT_TIMEOUT_S = 60.0  # per BatchObjects attempt; ingest only, never on the request path
UPSERT_BATCH = 200  # objects per BatchObjects request (keeps messages far below the gRPC max)
ITERATOR_PAGE = 500  # objects per cursor page in iterate()
CHUNK_ID_PROPERTY = "chunk_id"
DOC_ID_PROPERTY = "doc_id"
POSITION_PROPERTY = "position"
_NO_RETRY_RPCS = ("Search", "Aggregate", "BatchObjects")

_GRPC_TO_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
}


class _Unavailable(Exception):
    """gRPC UNAVAILABLE, re-raised as a type the client's internal ``_Retry`` does not catch."""

    def __init__(self, rpc_error: grpc.aio.AioRpcError) -> None:
        super().__init__(rpc_error.details() or "UNAVAILABLE")
        self.rpc_error = rpc_error


def _fail_fast(call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def invoke(*args: Any, **kwargs: Any) -> Any:
        try:
            return await call(*args, **kwargs)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise _Unavailable(exc) from exc
            raise

    invoke._rag_fail_fast = True  # type: ignore[attr-defined]
    return invoke


def disable_client_grpc_retries(client: weaviate.WeaviateAsyncClient) -> bool:
    """Make the connected client's data-plane gRPC calls fail fast on UNAVAILABLE (see module doc).

    Returns False when the private seam is not where 4.23.1 keeps it (nothing is changed then).
    """
    stub = getattr(getattr(client, "_connection", None), "_grpc_stub", None)
    calls = {name: getattr(stub, name, None) for name in _NO_RETRY_RPCS}
    if stub is None or any(call is None for call in calls.values()):
        return False
    for name, call in calls.items():
        if not getattr(call, "_rag_fail_fast", False):
            setattr(stub, name, _fail_fast(call))  # type: ignore[arg-type]
    return True


def _rpc_error(exc: BaseException) -> grpc.RpcError | None:
    """The gRPC error behind ``exc``: the client wraps it in its own exceptions, chained."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, _Unavailable):
            return cur.rpc_error
        if isinstance(cur, grpc.RpcError) and hasattr(cur, "code"):
            return cur
        todo.extend((cur.__cause__, cur.__context__))
    return None


def _retry_after(rpc: grpc.RpcError) -> float | None:
    trailing = rpc.trailing_metadata() if hasattr(rpc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key.lower() == "retry-after":
            try:
                return max(float(value), 0.0)
            except (TypeError, ValueError):
                return None
    return None


def to_upstream_error(exc: Exception, op: str) -> Exception:
    """Map a weaviate-client / gRPC / httpx failure to what the guard judges.

    Returns ``TimeoutError`` for a gRPC DEADLINE_EXCEEDED or a REST timeout, else an
    :class:`UpstreamError`: UNAVAILABLE and connection failures → 503 retryable; RESOURCE_EXHAUSTED
    → 429 retryable (Retry-After from trailing metadata); INVALID_ARGUMENT → 400, caller's fault;
    UNAUTHENTICATED/PERMISSION_DENIED → 401/403 not retryable (our misconfiguration); any other
    code → 500 retryable; REST statuses via :func:`error_for_status` (the client drops response
    headers, so REST Retry-After is lost). Anything else (a bug of ours) is returned unchanged.
    """
    rpc = _rpc_error(exc)
    if rpc is not None:
        code = rpc.code()  # type: ignore[attr-defined]
        details = rpc.details() if hasattr(rpc, "details") else str(rpc)  # type: ignore[attr-defined]
        message = f"weaviate {op}: gRPC {code.name}: {details}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return TimeoutError(message)
        status = _GRPC_TO_STATUS.get(code, 500)
        if status in (401, 403):
            return UpstreamError(message, status=status, retryable=False)
        return UpstreamError(message, status=status, retryable=status != 400, caller_fault=status == 400,
                             retry_after_s=_retry_after(rpc) if status in (429, 503) else None)
    message = f"weaviate {op}: {exc}"
    if isinstance(exc, (WeaviateTimeoutError, httpx.TimeoutException)):
        return TimeoutError(message)
    if isinstance(exc, InsufficientPermissionsError):
        return UpstreamError(message, status=403, retryable=False)
    if isinstance(exc, UnexpectedStatusCodeError):
        return error_for_status(exc.status_code, message)
    # The client re-raises httpx transport errors other than ConnectError/ReadTimeout unwrapped.
    if isinstance(exc, (WeaviateConnectionError, WeaviateStartUpError, WeaviateClosedClientError,
                        httpx.TransportError)):
        return UpstreamError(message, status=503, retryable=True)
    if isinstance(exc, WeaviateBaseError):
        return UpstreamError(message, status=500, retryable=True)
    return exc


def _reraise(exc: Exception, op: str) -> NoReturn:
    mapped = to_upstream_error(exc, op)
    if mapped is exc:
        raise exc
    raise mapped from exc


def _rejected(detail: str) -> UpstreamError:
    # Per-object batch errors are validation failures (dimension, types): retrying cannot help.
    return UpstreamError(f"weaviate upsert: {detail}", status=422, retryable=False, caller_fault=True)


class WeaviateStore:
    """:class:`~gateway.upstreams.base.VectorStore` over one Weaviate collection.

    Properties: the configured text/title/source names plus ``chunk_id``, ``doc_id``, ``position``.
    Objects get ``uuid = generate_uuid5(chunk.id)``, so re-ingesting a chunk overwrites it.
    Scores are cosine similarity (``1 - distance``). Methods raise :class:`UpstreamError` or
    ``TimeoutError`` for upstream failures (see :func:`to_upstream_error`) and ``RuntimeError``
    when called before :meth:`connect`.
    """

    name = "weaviate"
    serves_kb_versions = False  # the collection is the source of truth; ingest upserts into it

    def __init__(self, config: VectorStoreConfig, *, hybrid: bool = False, fusion: str = "rrf",
                 alpha: float = 0.5) -> None:
        # hybrid: Weaviate's own hybrid query (BM25 over the collection + vector, fused server-side:
        # RANKED = reciprocal rank fusion, RELATIVE_SCORE = min-max blend) — the normal path's retriever.
        self._hybrid = hybrid
        self._fusion = HybridFusion.RELATIVE_SCORE if fusion == "blend" else HybridFusion.RANKED
        self._alpha = alpha if fusion == "blend" else 0.5
        self._config = config
        self._wv = config.weaviate
        self._client: weaviate.WeaviateAsyncClient | None = None
        self._connect_lock = asyncio.Lock()
        self.client_retries_disabled = False

    @property
    def client(self) -> weaviate.WeaviateAsyncClient:
        if self._client is None:
            raise RuntimeError("WeaviateStore.connect() has not been called")
        return self._client

    async def connect(self) -> None:
        """Open REST + gRPC and check liveness (idempotent).

        Raises UpstreamError (503 unreachable or not live, 401/403 bad key) or TimeoutError.
        """
        async with self._connect_lock:
            if self._client is None:
                self._client = await self._open()

    async def _open(self) -> weaviate.WeaviateAsyncClient:
        wv = self._wv
        api_key = wv.api_key.get_secret_value() if wv.api_key is not None else ""
        client = weaviate.use_async_with_custom(
            http_host=wv.http_host, http_port=wv.http_port, http_secure=wv.secure,
            grpc_host=wv.grpc_host, grpc_port=wv.grpc_port, grpc_secure=wv.secure,
            auth_credentials=Auth.api_key(api_key) if api_key else None,
            additional_config=AdditionalConfig(timeout=Timeout(
                init=wv.init_timeout_s, query=self._config.timeout_s, insert=INSERT_TIMEOUT_S)),
            skip_init_checks=True,
        )
        try:
            await client.connect()
            if not await client.is_live():
                raise UpstreamError(f"weaviate at {wv.http_host}:{wv.http_port} (gRPC {wv.grpc_port}) "
                                    "is not live", status=503, retryable=True)
        except BaseException as exc:
            await client.close()
            if isinstance(exc, Exception):
                _reraise(exc, "connect")
            raise
        self.client_retries_disabled = disable_client_grpc_retries(client)
        if not self.client_retries_disabled:
            log.warning("weaviate-client internals changed: cannot disable its gRPC UNAVAILABLE retries "
                        "(1,2,4…32 s); calls are bounded by the guard deadline only")
        return client

    def load(self, version: str, version_dir: Path, chunks: ChunkTable, vectors: np.ndarray | None = None,
             *, unavailable: str | None = None, tier: str = "quality") -> None:
        """Nothing to load: searches go to the collection, whatever the local KB version."""

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _collection(self) -> Any:
        return self.client.collections.use(self._wv.collection)

    async def ensure_collection(self, vectorizer: bool = False) -> None:
        """Create the collection if missing (cosine HNSW). ``vectorizer=True`` configures
        text2vec-transformers over title+text so the server embeds (``use_near_text``)."""
        client = self.client
        cosine = Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
        vector_config = (
            Configure.Vectors.text2vec_transformers(
                source_properties=[self._wv.title_property, self._wv.text_property],
                vector_index_config=cosine)
            if vectorizer else Configure.Vectors.self_provided(vector_index_config=cosine))
        def keyword(name: str) -> Property:  # matched whole (filters), never embedded
            return Property(name=name, data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                            skip_vectorization=True)

        properties = [
            Property(name=self._wv.text_property, data_type=DataType.TEXT),
            Property(name=self._wv.title_property, data_type=DataType.TEXT),
            keyword(self._wv.source_property),
            keyword(CHUNK_ID_PROPERTY),
            keyword(DOC_ID_PROPERTY),
            Property(name=POSITION_PROPERTY, data_type=DataType.INT, skip_vectorization=True),
        ]
        try:
            if await client.collections.exists(self._wv.collection):
                return
            await client.collections.create(self._wv.collection, properties=properties,
                                            vector_config=vector_config)
        except UnexpectedStatusCodeError as exc:
            # Another replica created it between our exists() and create(): that is success.
            if exc.status_code == 422 and await client.collections.exists(self._wv.collection):
                return
            _reraise(exc, "ensure_collection")
        except Exception as exc:
            _reraise(exc, "ensure_collection")

    def _filter(self, filters: dict[str, Any] | None) -> _Filters | None:
        if not filters:
            return None
        aliases = {"text": self._wv.text_property, "title": self._wv.title_property,
                   "source": self._wv.source_property}
        parts: list[_Filters] = []
        for key, wanted in filters.items():
            prop = Filter.by_property(aliases.get(key, key))
            if isinstance(wanted, (list, tuple, set)):
                parts.append(prop.contains_any(list(wanted)))
            else:
                parts.append(prop.equal(wanted))
        return Filter.all_of(parts) if len(parts) > 1 else parts[0]

    async def search(self, vector: np.ndarray | None, top_k: int, *, query_text: str | None = None,
                     filters: dict[str, Any] | None = None) -> list[Chunk]:
        """Nearest chunks, best first (score = 1 - cosine distance, ``retriever="vector"``).

        With ``use_near_text`` and a ``query_text`` Weaviate vectorizes the text (``vector`` may be
        None); otherwise ``vector`` is required (``ValueError`` if None). ``filters`` is
        ``{property: value | [values]}``, all must match (``title``/``source``/``text`` name the
        configured properties).
        """
        by_text = self._wv.use_near_text and bool(query_text)
        if not by_text and vector is None:
            raise ValueError("WeaviateStore.search needs a vector unless use_near_text and query_text")
        query = self._collection().query
        where = self._filter(filters)
        metadata = MetadataQuery(distance=True)
        try:
            if self._hybrid and query_text:
                result = await query.hybrid(
                    query=str(query_text), alpha=self._alpha, fusion_type=self._fusion, limit=top_k, filters=where,
                    vector=None if by_text else np.asarray(vector, dtype=np.float32).ravel().tolist(),
                    return_metadata=MetadataQuery(score=True))
                return [self._chunk(obj, distance=None).scored(float(obj.metadata.score or 0.0), "hybrid")
                        for obj in result.objects]
            if by_text:
                result = await query.near_text(query=str(query_text), limit=top_k, filters=where,
                                               return_metadata=metadata)
            else:
                result = await query.near_vector(
                    near_vector=np.asarray(vector, dtype=np.float32).ravel().tolist(), limit=top_k,
                    filters=where, return_metadata=metadata)
        except Exception as exc:
            _reraise(exc, "search")
        return [self._chunk(obj, distance=obj.metadata.distance) for obj in result.objects]

    async def count(self) -> int:
        """Objects in the collection (gRPC Aggregate)."""
        try:
            result = await self._collection().aggregate.over_all(total_count=True)
        except Exception as exc:
            _reraise(exc, "count")
        return int(result.total_count or 0)

    async def iterate(self) -> AsyncIterator[Chunk]:
        """Every chunk, in uuid order, paging with the server cursor (``after``)."""
        iterator = self._collection().iterator(cache_size=ITERATOR_PAGE).__aiter__()
        while True:
            try:
                obj = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                _reraise(exc, "iterate")
            yield self._chunk(obj, distance=None)

    async def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray | None) -> None:
        """Insert or overwrite ``chunks`` (row i of ``vectors`` belongs to chunk i; None = the
        collection's vectorizer embeds). Raises ``ValueError`` on a shape mismatch, and
        UpstreamError(422, caller_fault) listing the first per-object errors Weaviate reports."""
        if vectors is not None and len(vectors) != len(chunks):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        data = self._collection().data
        for start in range(0, len(chunks), UPSERT_BATCH):
            objects = [
                DataObject(properties=self._properties(chunk), uuid=generate_uuid5(chunk.id),
                           vector=(np.asarray(vectors[i], dtype=np.float32).tolist()
                                   if vectors is not None else None))
                for i, chunk in enumerate(chunks[start:start + UPSERT_BATCH], start)
            ]
            try:
                result = await data.insert_many(objects)
            except WeaviateInsertManyAllFailedError as exc:  # the client raises when none succeeded
                raise _rejected(f"all {len(objects)} objects: {exc.message}") from exc
            except Exception as exc:
                _reraise(exc, "upsert")
            if result.has_errors:
                first = "; ".join(f"#{start + i}: {err.message}" for i, err in list(result.errors.items())[:3])
                raise _rejected(f"{len(result.errors)} of {len(objects)} objects rejected: {first}")

    def _properties(self, chunk: Chunk) -> dict[str, Any]:
        return {
            self._wv.text_property: chunk.text, self._wv.title_property: chunk.title,
            self._wv.source_property: chunk.source, CHUNK_ID_PROPERTY: chunk.id,
            DOC_ID_PROPERTY: chunk.doc_id, POSITION_PROPERTY: int(chunk.position),
        }

    def _chunk(self, obj: Any, *, distance: float | None) -> Chunk:
        props = dict(obj.properties)
        uuid: uuid_lib.UUID = obj.uuid
        text = props.pop(self._wv.text_property, None)
        title = props.pop(self._wv.title_property, None)
        source = props.pop(self._wv.source_property, None)
        chunk_id = props.pop(CHUNK_ID_PROPERTY, None)
        doc_id = props.pop(DOC_ID_PROPERTY, None)
        position = props.pop(POSITION_PROPERTY, None)
        return Chunk(
            id=str(chunk_id) if chunk_id else str(uuid), text=str(text or ""), title=str(title or ""),
            source=str(source or ""), doc_id=str(doc_id or ""), position=int(position or 0),
            score=1.0 - distance if distance is not None else 0.0,
            retriever="vector" if distance is not None else "",
            metadata={k: v for k, v in props.items() if v is not None},
        )
