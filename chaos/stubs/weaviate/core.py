"""The stand-in's shared state: collections, faults, counters, object writes."""
from __future__ import annotations

import asyncio
import uuid as uuid_lib
from typing import Any

import grpc
import numpy as np
from aiohttp import web

from chaos.stubs.faults import Faults
from chaos.stubs.httpfaults import FaultInjector
from chaos.stubs.weaviate.store import (DEFAULT_VECTORIZER_MODULE, FakeCollection, StoredObject, Vectorizer, _as_list,
                                        _capitalize, _unknown, normalize_class)


def _weaviate_error(message: str) -> dict[str, Any]:
    return {"error": [{"message": message}]}


def _rest_error_body(request: web.Request, status: int) -> dict[str, Any]:
    return _weaviate_error(f"fake weaviate: injected status {status}")


class StandIn:
    """The state both halves share: collections, the fault injector, call counters, object writes.
    :class:`~chaos.stubs.weaviate.FakeWeaviate` composes it with the REST and gRPC halves.

    ``vectorizer`` turns text into a vector for near_text, hybrid without a vector, and inserts
    without a vector into collections configured with a vectorizer module; without it those
    answer UNKNOWN like a real server whose collection has no usable vectorizer. ``seed`` seeds
    the RNG behind ``faults.error_rate``. ``api_key`` (optional) makes REST demand
    ``Authorization: Bearer <key>`` and gRPC the same metadata, as a server with API-key auth.
    """

    def __init__(self, *, vectorizer: Vectorizer | None = None, seed: int = 0,
                 api_key: str | None = None) -> None:
        self.vectorizer = vectorizer
        self.api_key = api_key
        self._seed = seed
        self.injector = FaultInjector(seed=seed, error_body=_rest_error_body)
        self.collections: dict[str, FakeCollection] = {}
        self.search_calls = 0
        self.batch_calls = 0
        self.aggregate_calls = 0
        self.cancelled_calls = 0  # data-plane calls the client cancelled while in flight
        self.http_port: int = 0
        self.grpc_port: int = 0
        self._counters_changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._grpc_server: grpc.aio.Server | None = None

    # -- seeding -----------------------------------------------------------------------------

    def add_collection(self, name: str, properties: list[str], vectorizer: bool = False) -> FakeCollection:
        """Create (or replace) a collection of text ``properties``, as the client's create would."""
        module = DEFAULT_VECTORIZER_MODULE if vectorizer else "none"
        schema = normalize_class({
            "class": name,
            "properties": [{"name": p, "dataType": ["text"]} for p in properties],
            "vectorConfig": {"default": {"vectorizer": {module: {}}, "vectorIndexType": "hnsw"}},
        })
        coll = FakeCollection(schema)
        self.collections[coll.name] = coll
        return coll

    def insert(self, collection: str, uuid: str | uuid_lib.UUID, properties: dict[str, Any],
               vector: np.ndarray | list[float] | None) -> None:
        """Upsert one object. Raises ``KeyError`` for an unknown collection, ``ValueError`` as batch would."""
        coll = self.collections[_capitalize(collection)]
        vec = None if vector is None else np.asarray(vector, dtype=np.float32).ravel()
        self._upsert(coll, str(uuid), dict(properties), vec)

    # -- faults and counters ------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self.injector.faults

    def set_faults(self, **changes: Any) -> None:
        """Merge fault fields (e.g. ``status=503``). Raises ValueError on an unknown field or bad value."""
        self.injector.set(**changes)

    def clear_faults(self) -> None:
        """Back to healthy; hung calls are released and served normally."""
        self.injector.clear()

    def reset_stats(self) -> None:
        self.search_calls = self.batch_calls = self.aggregate_calls = self.cancelled_calls = 0

    def stats(self) -> dict[str, Any]:
        return {
            "search_calls": self.search_calls, "batch_calls": self.batch_calls,
            "aggregate_calls": self.aggregate_calls, "cancelled_calls": self.cancelled_calls,
            "objects": {name: len(c.objects) for name, c in self.collections.items()},
        }

    async def wait_for_calls(self, *, search: int = 0, batch: int = 0, aggregate: int = 0,
                             cancelled: int = 0) -> None:
        """Return once the counters reach at least these values (wrap it in a timeout)."""
        while not (self.search_calls >= search and self.batch_calls >= batch
                   and self.aggregate_calls >= aggregate and self.cancelled_calls >= cancelled):
            await self._counters_changed.wait()

    def _bump(self, counter: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        changed, self._counters_changed = self._counters_changed, asyncio.Event()
        changed.set()

    def _draw(self) -> bool:
        """Whether this call gets the status/hang/reset faults (``error_rate``, seeded RNG)."""
        f = self.faults
        if not (f.status or f.hang or f.reset):
            return False
        return f.error_rate >= 1.0 or self.injector.rng.random() < f.error_rate

    # -- data plane ----------------------------------------------------------------------------

    def _collection(self, name: str) -> FakeCollection:
        coll = self.collections.get(_capitalize(name))
        if coll is None:
            raise _unknown(f"could not find class {name} in schema")
        return coll

    def _vectorize(self, coll: FakeCollection, text: str, search_type: str) -> np.ndarray:
        if not coll.vectorized or self.vectorizer is None:
            raise _unknown(f"could not vectorize input for collection {coll.name} with search-type "
                           f"{search_type}. Make sure a vectorizer module is configured for this collection")
        return np.asarray(self.vectorizer(text), dtype=np.float32).ravel()

    def _upsert(self, coll: FakeCollection, uuid: str, props: dict[str, Any], vector: np.ndarray | None) -> None:
        uuid = str(uuid_lib.UUID(uuid))
        if vector is None and coll.vectorized and self.vectorizer is not None:
            text = " ".join(str(v) for p in coll.text_properties() for v in _as_list(props.get(p, [])))
            vector = self._vectorize(coll, text, "insert")
        dim = coll.vector_dim()
        if vector is not None and dim is not None and vector.shape[0] != dim and uuid not in coll.objects:
            raise ValueError(f"new node has a vector with length {vector.shape[0]}. "
                             f"Existing nodes have vectors with length {dim}")
        coll.add_unknown_properties(props)
        existing = coll.objects.get(uuid)
        obj = StoredObject(uuid, props, vector)
        if existing is not None:
            obj.created_ms = existing.created_ms
        coll.put(obj)

