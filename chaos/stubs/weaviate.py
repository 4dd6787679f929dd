"""A protocol-faithful fake Weaviate that the real ``weaviate-client`` 4.23.1 drives unchanged.

REST (aiohttp) serves what the client's connect / schema paths call: ``GET /v1/meta``,
``/v1/.well-known/{ready,live,openid-configuration}``, ``/v1/schema`` (list, get, create, delete).
gRPC (``grpc.aio`` with the client's own shipped ``weaviate.proto.v1`` stubs) serves ``Search``
(near_vector, near_text, bm25, hybrid, fetch with ``after`` cursor, filters), ``BatchObjects``
(upsert), ``Aggregate`` (object count) and the ``grpc.health.v1`` health service that
``client.is_live()`` and the connect-time ping use. Collections live in memory: uuid → properties,
one vector.

Faults (:class:`chaos.stubs.faults.Faults`) apply to the data-plane RPCs (Search, BatchObjects,
Aggregate): ``latency_s`` sleeps before answering; ``status`` aborts with the mapped gRPC code
(503→UNAVAILABLE, 500→INTERNAL, 429→RESOURCE_EXHAUSTED, 504→DEADLINE_EXCEEDED, 400→INVALID_ARGUMENT)
and ``retry-after`` trailing metadata when ``retry_after_s`` is set; ``hang`` parks the call until
faults are cleared or the fake stops; ``reset`` aborts with UNAVAILABLE "connection reset" — grpc.aio
gives a handler no access to its HTTP/2 connection, so a real TCP reset needs ``chaos.proxy``.
``error_rate`` picks the share of calls ``status``/``hang``/``reset`` hit, from an RNG seeded at
construction (deterministic sequences). On REST only ``GET /v1/meta`` honours ``status``, ``reset``
and ``malformed``.

Faults are held by the shared :class:`chaos.stubs.httpfaults.FaultInjector`, so switching them works
as for every stand-in: :meth:`FakeWeaviate.set_faults` (merge) / :meth:`FakeWeaviate.clear_faults`
(both release hung calls), or from another process ``GET/PUT(replace)/PATCH(merge)/DELETE
/__faults__``. ``GET /__stats__`` returns the gRPC counters (``DELETE`` resets them); a call is
counted when it arrives, before faults, so a test can assert "zero upstream attempts".

Simplifications (say so before relying on them): filters compare whole property values (as with
``tokenization="field"``); ``bm25`` is textbook BM25 (k1=1.2, b=0.75) over ``\\w+`` lower-cased tokens;
hybrid fuses with relativeScore (min-max per side) or ranked (RRF, k=60); one vector per object
whatever the named-vector config says; no tenants, references, group-by, sort, generative, rerank
(these answer UNIMPLEMENTED). Errors a real server reports as plain Go errors answer UNKNOWN.

Run standalone: ``python -m chaos.stubs.weaviate --http-port 8080 --grpc-port 50051`` (port 0 picks
a free one; the bound ports are printed as one JSON line).
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import copy
import fnmatch
import hashlib
import json
import math
import re
import struct
import time
import uuid as uuid_lib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NoReturn

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    base_search_pb2,
    batch_pb2,
    properties_pb2,
    search_get_pb2,
    weaviate_pb2_grpc,
)

from chaos.stubs.faults import Faults
from chaos.stubs.httpfaults import FaultInjector, drop_connection, serve_until_signalled

WEAVIATE_VERSION = "1.32.0"
GRPC_MAX_MESSAGE_SIZE = 104_858_000  # what a default 1.32 server reports in /v1/meta
DEFAULT_QUERY_LIMIT = 10  # Weaviate's QUERY_DEFAULTS_LIMIT
DEFAULT_VECTORIZER_MODULE = "text2vec-transformers"
_BM25_K1, _BM25_B = 1.2, 0.75
_RRF_K = 60
_TOKEN = re.compile(r"\w+", re.UNICODE)

Vectorizer = Callable[[str], np.ndarray]

_STATUS_TO_GRPC: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code_for_status(status: int) -> grpc.StatusCode:
    """The gRPC code the fake answers for an HTTP-ish fault ``status`` (unknown → UNKNOWN)."""
    return _STATUS_TO_GRPC.get(status, grpc.StatusCode.UNKNOWN)


def hashing_vectorizer(dim: int = 64) -> Vectorizer:
    """A deterministic bag-of-words vectorizer (feature hashing, L2-normalised, float32).

    Texts sharing words get a positive cosine similarity — enough for near_text tests and drills
    without a model.
    """

    def vectorize(text: str) -> np.ndarray:
        vec = np.zeros(dim, dtype=np.float32)
        for token in _TOKEN.findall(text.lower()):
            h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
            vec[h % dim] += 1.0 if (h >> 63) == 0 else -1.0
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec

    return vectorize


class _RpcFailure(Exception):
    """Raised inside request handling; the servicer turns it into ``context.abort(code, message)``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unknown(message: str) -> _RpcFailure:
    return _RpcFailure(grpc.StatusCode.UNKNOWN, message)


def _unimplemented(what: str) -> _RpcFailure:
    return _RpcFailure(grpc.StatusCode.UNIMPLEMENTED, f"fake weaviate does not implement {what}")


def _capitalize(name: str) -> str:
    return name[:1].upper() + name[1:]


# --------------------------------------------------------------------------------------------
# Schema: what the client POSTs, normalised to what a 1.32 server serves back.

_HNSW_DEFAULTS: dict[str, Any] = {
    "skip": False, "cleanupIntervalSeconds": 300, "maxConnections": 32, "efConstruction": 128,
    "ef": -1, "dynamicEfMin": 100, "dynamicEfMax": 500, "dynamicEfFactor": 8,
    "vectorCacheMaxObjects": 1_000_000_000_000, "flatSearchCutoff": 40_000, "distance": "cosine",
    "filterStrategy": "sweeping",
    "pq": {"enabled": False, "bitCompression": False, "segments": 0, "centroids": 256,
           "trainingLimit": 100_000, "encoder": {"type": "kmeans", "distribution": "log-normal"}},
    "bq": {"enabled": False}, "sq": {"enabled": False, "trainingLimit": 100_000, "rescoreLimit": 20},
    "rq": {"enabled": False, "bits": 8, "rescoreLimit": 20},
    "multivector": {"enabled": False, "aggregation": "maxSim",
                    "muvera": {"enabled": False, "ksim": 4, "dprojections": 16, "repetitions": 10}},
}
_INVERTED_DEFAULTS: dict[str, Any] = {
    "bm25": {"b": _BM25_B, "k1": _BM25_K1}, "cleanupIntervalSeconds": 60,
    "stopwords": {"additions": None, "preset": "en", "removals": None},
    "usingBlockMaxWAND": True,
}
_SHARDING_DEFAULTS: dict[str, Any] = {
    "virtualPerPhysical": 128, "desiredCount": 1, "actualCount": 1, "desiredVirtualCount": 128,
    "actualVirtualCount": 128, "key": "_id", "strategy": "hash", "function": "murmur3",
}
_TEXT_TYPES = {"text", "text[]", "string", "string[]"}


def _merged(defaults: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for key, value in (given or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _vectorizer_modules(cls: dict[str, Any]) -> list[str]:
    if "vectorConfig" in cls:
        return [next(iter(vc.get("vectorizer") or {"none": {}})) for vc in cls["vectorConfig"].values()]
    return [cls.get("vectorizer", "none")]


def _normalize_property(prop: dict[str, Any], modules: list[str]) -> dict[str, Any]:
    p = copy.deepcopy(prop)
    skip = bool(p.pop("skip_vectorization", False))
    vectorize_name = bool(p.pop("vectorize_property_name", False))
    data_type = p["dataType"][0]
    is_text = data_type in _TEXT_TYPES
    p.setdefault("indexFilterable", True)
    p.setdefault("indexSearchable", is_text)
    p.setdefault("indexRangeFilters", False)
    if is_text:
        p.setdefault("tokenization", "word")
    module_config = p.setdefault("moduleConfig", {})
    for module in modules:
        if module != "none":
            module_config.setdefault(module, {"skip": skip, "vectorizePropertyName": vectorize_name})
    if not module_config:
        del p["moduleConfig"]
    return p


def normalize_class(body: dict[str, Any]) -> dict[str, Any]:
    """Fill in the server-side defaults a real 1.32 server adds to a created class.

    Raises ``ValueError`` when ``class`` is missing.
    """
    if not body.get("class"):
        raise ValueError("class name is required")
    cls = copy.deepcopy(body)
    cls["class"] = _capitalize(cls["class"])
    if "vectorConfig" not in cls and "vectorizer" not in cls:
        cls["vectorConfig"] = {"default": {"vectorizer": {"none": {}}}}
    if "vectorConfig" in cls:
        for named in cls["vectorConfig"].values():
            named.setdefault("vectorizer", {"none": {}})
            named.setdefault("vectorIndexType", "hnsw")
            named["vectorIndexConfig"] = _merged(_HNSW_DEFAULTS, named.get("vectorIndexConfig"))
    else:
        cls.setdefault("vectorIndexType", "hnsw")
        cls["vectorIndexConfig"] = _merged(_HNSW_DEFAULTS, cls.get("vectorIndexConfig"))
        cls.setdefault("moduleConfig", {})
        if cls["vectorizer"] != "none":
            cls["moduleConfig"].setdefault(cls["vectorizer"], {"vectorizeClassName": True})
    modules = _vectorizer_modules(cls)
    cls["properties"] = [_normalize_property(p, modules) for p in cls.get("properties") or []]
    cls["invertedIndexConfig"] = _merged(_INVERTED_DEFAULTS, cls.get("invertedIndexConfig"))
    cls["multiTenancyConfig"] = _merged(
        {"enabled": False, "autoTenantCreation": False, "autoTenantActivation": False},
        cls.get("multiTenancyConfig"))
    cls["replicationConfig"] = _merged(
        {"factor": 1, "asyncEnabled": False, "deletionStrategy": "NoAutomatedResolution"},
        cls.get("replicationConfig"))
    cls["shardingConfig"] = _merged(_SHARDING_DEFAULTS, cls.get("shardingConfig"))
    return cls


# --------------------------------------------------------------------------------------------
# Storage


@dataclass
class StoredObject:
    uuid: str
    properties: dict[str, Any]
    vector: np.ndarray | None
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    updated_ms: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass
class FakeCollection:
    """One class: its served schema JSON and its objects (uuid → object)."""

    schema: dict[str, Any]
    objects: dict[str, StoredObject] = field(default_factory=dict)
    # Stacked vectors, rebuilt lazily after writes, so a query is one mat-vec, not a Python loop.
    _index: tuple[list[str], np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _uuid_order: list[str] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return str(self.schema["class"])

    @property
    def vectorized(self) -> bool:
        return any(m != "none" for m in _vectorizer_modules(self.schema))

    def data_types(self) -> dict[str, str]:
        return {p["name"]: p["dataType"][0] for p in self.schema.get("properties", [])}

    def text_properties(self) -> list[str]:
        return [name for name, dt in self.data_types().items() if dt in _TEXT_TYPES]

    def vector_dim(self) -> int | None:
        for obj in self.objects.values():
            if obj.vector is not None:
                return int(obj.vector.shape[0])
        return None

    def put(self, obj: StoredObject) -> None:
        if obj.uuid not in self.objects:
            self._uuid_order = None
        self.objects[obj.uuid] = obj
        self._index = None

    def in_uuid_order(self, after: str | None, allowed: set[str] | None, k: int) -> list[StoredObject]:
        """Up to ``k`` objects with uuid > ``after`` (the cursor), ascending, restricted to ``allowed``."""
        if self._uuid_order is None:
            self._uuid_order = sorted(self.objects)
        out: list[StoredObject] = []
        start = bisect.bisect_right(self._uuid_order, after) if after else 0
        for uuid in self._uuid_order[start:]:
            if allowed is None or uuid in allowed:
                out.append(self.objects[uuid])
                if len(out) >= k:
                    break
        return out

    def nearest(self, query: np.ndarray, allowed: set[str] | None, k: int,
                max_distance: float | None = None) -> list[tuple[StoredObject, float]]:
        """Up to ``k`` objects by ascending cosine distance, restricted to ``allowed`` uuids.

        Raises ``_RpcFailure`` (UNKNOWN, Weaviate's message) when the dimensions differ.
        """
        if self._index is None:
            with_vec = [o for o in self.objects.values() if o.vector is not None]
            matrix = (np.stack([o.vector for o in with_vec]) if with_vec  # type: ignore[misc]
                      else np.zeros((0, 0), np.float32))
            self._index = ([o.uuid for o in with_vec], matrix, np.linalg.norm(matrix, axis=1))
        uuids, matrix, norms = self._index
        if not uuids or k <= 0:
            return []
        if matrix.shape[1] != query.shape[0]:
            raise _unknown(f"vector search: knn search: distance between entrypoint and query node: "
                           f"vector lengths don't match: {matrix.shape[1]} vs {query.shape[0]}")
        denom = norms * float(np.linalg.norm(query))
        sims = np.divide(matrix @ query, denom, out=np.zeros(len(uuids), dtype=np.float64), where=denom > 0)
        dist = 1.0 - sims
        mask = (np.ones(len(uuids), dtype=bool) if allowed is None
                else np.fromiter((u in allowed for u in uuids), dtype=bool, count=len(uuids)))
        if max_distance is not None:
            mask &= dist <= max_distance
        idx = np.flatnonzero(mask)
        if k < len(idx):
            idx = idx[np.argpartition(dist[idx], k - 1)[:k]]
        idx = idx[np.argsort(dist[idx], kind="stable")]
        return [(self.objects[uuids[i]], float(dist[i])) for i in idx]

    def add_unknown_properties(self, props: dict[str, Any]) -> None:
        """Auto-schema: a real server adds properties it has not seen, typed from the value."""
        known = self.data_types()
        for name, value in props.items():
            if name not in known:
                self.schema["properties"].append(_normalize_property(
                    {"name": name, "dataType": [_infer_data_type(value)]}, _vectorizer_modules(self.schema)))


def _infer_data_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        inner = _infer_data_type(value[0]) if value else "text"
        return inner + "[]"
    return "text"


# --------------------------------------------------------------------------------------------
# Property and vector codecs (the client's wire formats)


def _decode_f32(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def _vector_from_vectors(vectors: Iterable[base_pb2.Vectors]) -> np.ndarray | None:
    for vec in vectors:
        if vec.type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
            raise _unimplemented("multi-vectors")
        return _decode_f32(vec.vector_bytes)
    return None


def _near_vector_query(nv: base_search_pb2.NearVector) -> np.ndarray:
    vec = _vector_from_vectors(nv.vectors)
    if vec is not None:
        return vec
    if nv.vector_bytes:
        return _decode_f32(nv.vector_bytes)
    if len(nv.vector):
        return np.asarray(nv.vector, dtype=np.float32)
    for target in nv.vector_for_targets:
        vec = _vector_from_vectors(target.vectors)
        if vec is not None:
            return vec
        if target.vector_bytes:
            return _decode_f32(target.vector_bytes)
    raise _unknown("near_vector: no vector given")


def _batch_object_properties(props: batch_pb2.BatchObject.Properties) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(props.non_ref_properties) if props.HasField(
        "non_ref_properties") else {}
    for arr in props.text_array_properties:
        out[arr.prop_name] = list(arr.values)
    for iarr in props.int_array_properties:
        out[iarr.prop_name] = [int(v) for v in iarr.values]
    for narr in props.number_array_properties:
        out[narr.prop_name] = (list(np.frombuffer(narr.values_bytes, dtype="<f8").tolist())
                               if narr.values_bytes else [float(v) for v in narr.values])
    for barr in props.boolean_array_properties:
        out[barr.prop_name] = [bool(v) for v in barr.values]
    for name in props.empty_list_props:
        out[name] = []
    if props.object_properties or props.object_array_properties:
        raise _unimplemented("object properties")
    if props.single_target_ref_props or props.multi_target_ref_props:
        raise _unimplemented("references")
    return out


def _value(value: Any, data_type: str | None) -> properties_pb2.Value:
    if value is None:
        return properties_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, list):
        return properties_pb2.Value(list_value=_list_value(value, data_type))
    if data_type == "int" or (data_type is None and isinstance(value, int) and not isinstance(value, bool)):
        return properties_pb2.Value(int_value=int(value))
    if isinstance(value, bool) or data_type == "boolean":
        return properties_pb2.Value(bool_value=bool(value))
    if data_type == "number" or isinstance(value, (int, float)):
        return properties_pb2.Value(number_value=float(value))
    if data_type == "uuid":
        return properties_pb2.Value(uuid_value=str(value))
    if data_type == "date":
        return properties_pb2.Value(date_value=str(value))
    return properties_pb2.Value(text_value=str(value))


def _list_value(values: list[Any], data_type: str | None) -> properties_pb2.ListValue:
    inner = (data_type or "")[:-2] if (data_type or "").endswith("[]") else None
    if inner is None and values:
        inner = _infer_data_type(values[0])
    if inner == "int":
        return properties_pb2.ListValue(int_values=properties_pb2.IntValues(
            values=struct.pack(f"<{len(values)}q", *(int(v) for v in values))))
    if inner == "number":
        return properties_pb2.ListValue(number_values=properties_pb2.NumberValues(
            values=struct.pack(f"<{len(values)}d", *(float(v) for v in values))))
    if inner == "boolean":
        return properties_pb2.ListValue(bool_values=properties_pb2.BoolValues(values=[bool(v) for v in values]))
    if inner == "uuid":
        return properties_pb2.ListValue(uuid_values=properties_pb2.UuidValues(values=[str(v) for v in values]))
    if inner == "date":
        return properties_pb2.ListValue(date_values=properties_pb2.DateValues(values=[str(v) for v in values]))
    return properties_pb2.ListValue(text_values=properties_pb2.TextValues(values=[str(v) for v in values]))


# --------------------------------------------------------------------------------------------
# Filters


def _filter_value(f: base_pb2.Filters) -> Any:
    kind = f.WhichOneof("test_value")
    if kind is None:
        return None
    raw = getattr(f, kind)
    if kind.endswith("_array"):
        return list(raw.values)
    return raw


def _filter_property(f: base_pb2.Filters) -> str:
    if f.HasField("target"):
        if f.target.WhichOneof("target") != "property":
            raise _unimplemented("reference filters")
        return f.target.property
    if f.on:
        if len(f.on) > 1:
            raise _unimplemented("reference filters")
        return f.on[0]
    raise _unknown("filter without a target property")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _matches(f: base_pb2.Filters, obj: StoredObject) -> bool:
    op = f.operator
    ops = base_pb2.Filters
    if op == ops.OPERATOR_AND:
        return all(_matches(sub, obj) for sub in f.filters)
    if op == ops.OPERATOR_OR:
        return any(_matches(sub, obj) for sub in f.filters)
    if op == ops.OPERATOR_NOT:
        return not all(_matches(sub, obj) for sub in f.filters)
    prop = _filter_property(f)
    actual = obj.uuid if prop in ("_id", "id") else obj.properties.get(prop)
    expected = _filter_value(f)
    if op == ops.OPERATOR_IS_NULL:
        return (actual is None or actual == []) == bool(expected)
    if actual is None:
        return False
    if op == ops.OPERATOR_EQUAL:
        return expected in actual if isinstance(actual, list) else actual == expected
    if op == ops.OPERATOR_NOT_EQUAL:
        return expected not in actual if isinstance(actual, list) else actual != expected
    if op == ops.OPERATOR_CONTAINS_ANY:
        return any(v in _as_list(actual) for v in _as_list(expected))
    if op == ops.OPERATOR_CONTAINS_ALL:
        return all(v in _as_list(actual) for v in _as_list(expected))
    if op == ops.OPERATOR_CONTAINS_NONE:
        return not any(v in _as_list(actual) for v in _as_list(expected))
    if op == ops.OPERATOR_LIKE:
        return any(fnmatch.fnmatchcase(str(v), str(expected)) for v in _as_list(actual))
    comparisons: dict[int, Callable[[Any, Any], bool]] = {
        ops.OPERATOR_GREATER_THAN: lambda a, e: a > e,
        ops.OPERATOR_GREATER_THAN_EQUAL: lambda a, e: a >= e,
        ops.OPERATOR_LESS_THAN: lambda a, e: a < e,
        ops.OPERATOR_LESS_THAN_EQUAL: lambda a, e: a <= e,
    }
    if op in comparisons:
        try:
            return comparisons[op](actual, expected)
        except TypeError:
            return False
    raise _unimplemented(f"filter operator {ops.Operator.Name(op)}")


# --------------------------------------------------------------------------------------------
# Scoring


def _tokens(value: Any) -> list[str]:
    return [t for v in _as_list(value) for t in _TOKEN.findall(str(v).lower())]


def _bm25_scores(query: str, objects: list[StoredObject], corpus: list[StoredObject],
                 properties: list[str], require_all: bool) -> dict[str, float]:
    """BM25 over ``properties`` (``name^2`` boosts a property), statistics from ``corpus``."""
    weighted = []
    for p in properties:
        name, _, boost = p.partition("^")
        weighted.append((name, float(boost) if boost else 1.0))
    terms = list(dict.fromkeys(_tokens(query)))
    if not terms:
        return {}

    def doc_tokens(o: StoredObject) -> dict[str, list[str]]:
        return {name: _tokens(o.properties.get(name, "")) for name, _ in weighted}

    stats = [doc_tokens(o) for o in corpus]
    n_docs = max(len(corpus), 1)
    avg_len = {name: (sum(len(s[name]) for s in stats) / n_docs) or 1.0 for name, _ in weighted}
    df = {t: sum(1 for s in stats if any(t in toks for toks in s.values())) for t in terms}
    scores: dict[str, float] = {}
    for o in objects:
        toks = doc_tokens(o)
        present = {t for t in terms if any(t in tk for tk in toks.values())}
        if not present or (require_all and len(present) < len(terms)):
            continue
        score = 0.0
        for t in present:
            idf = math.log(1.0 + (n_docs - df[t] + 0.5) / (df[t] + 0.5))
            for name, boost in weighted:
                tf = toks[name].count(t)
                if tf:
                    norm = tf + _BM25_K1 * (1 - _BM25_B + _BM25_B * len(toks[name]) / avg_len[name])
                    score += boost * idf * tf * (_BM25_K1 + 1) / norm
        scores[o.uuid] = score
    return scores


def _min_max(scores: dict[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    if hi == lo:
        return {k: 1.0 for k in scores}
    return {k: (v - lo) / (hi - lo) for k, v in scores.items()}


@dataclass
class _Hit:
    obj: StoredObject
    distance: float | None = None
    score: float | None = None
    explain: str | None = None


def _vector_hits(coll: FakeCollection, query: np.ndarray, allowed: set[str] | None, k: int,
                 opts: base_search_pb2.NearVector | base_search_pb2.NearTextSearch) -> list[_Hit]:
    limits = []
    if opts.HasField("distance"):
        limits.append(opts.distance)
    if opts.HasField("certainty"):
        limits.append(2 * (1 - opts.certainty))  # certainty = 1 - distance / 2
    nearest = coll.nearest(query, allowed, k, min(limits) if limits else None)
    return [_Hit(o, distance=d) for o, d in nearest]


# --------------------------------------------------------------------------------------------
# The fake


class FakeWeaviate:
    """In-memory Weaviate over real sockets: aiohttp REST + grpc.aio, with switchable faults.

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

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0) -> None:
        """Bind REST and gRPC (port 0 = ephemeral) and serve; sets ``http_port``/``grpc_port``."""
        if self.injector.closing:  # restarted after stop(): a closed injector releases holds at once
            self.injector = FaultInjector(self.faults, seed=self._seed, error_body=_rest_error_body)
        self._runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, http_port)
        await site.start()
        self.http_port = int(self._runner.addresses[0][1])

        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_SIZE),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_SIZE),
        ])
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_Servicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
        self.grpc_port = server.add_insecure_port(f"{host}:{grpc_port}")
        await server.start()
        self._grpc_server = server

    async def stop(self) -> None:
        """Release hung calls (they answer UNAVAILABLE), then stop both servers."""
        self.injector.close()
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=0.5)
            self._grpc_server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeWeaviate":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

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

    async def _apply_grpc_faults(self, context: grpc.aio.ServicerContext) -> None:
        """Raises ``_RpcFailure`` for an injected error; returns to serve normally."""
        shutting_down = _RpcFailure(grpc.StatusCode.UNAVAILABLE, "fake weaviate shutting down")
        latency_s = self.faults.latency_s
        if latency_s > 0 and await self.injector.hold_while(lambda: True, latency_s):
            raise shutting_down
        if not self._draw():
            return
        if self.faults.hang:
            if await self.injector.hold_while(lambda: self.faults.hang):
                raise shutting_down
            return  # released by clear_faults()/hang=False: serve normally
        if self.faults.reset:
            raise _RpcFailure(grpc.StatusCode.UNAVAILABLE, "connection reset by peer (fake weaviate)")
        if self.faults.status:
            if self.faults.retry_after_s is not None:
                context.set_trailing_metadata((("retry-after", f"{self.faults.retry_after_s:g}"),))
            raise _RpcFailure(grpc_code_for_status(self.faults.status),
                              f"fake weaviate: injected status {self.faults.status}")

    def _check_grpc_auth(self, context: grpc.aio.ServicerContext) -> None:
        if self.api_key is None:
            return
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {self.api_key}":
            raise _RpcFailure(grpc.StatusCode.UNAUTHENTICATED, "unauthorized: invalid api key")

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

    def search(self, request: search_get_pb2.SearchRequest) -> search_get_pb2.SearchReply:
        """Serve one SearchRequest. Raises ``_RpcFailure``."""
        started = time.perf_counter()
        for unsupported in ("group_by", "generative", "rerank", "near_object", "near_image", "near_audio",
                            "near_video", "near_depth", "near_thermal", "near_imu"):
            if request.HasField(unsupported):
                raise _unimplemented(unsupported)
        if request.sort_by:
            raise _unimplemented("sort_by")
        if request.tenant:
            raise _unimplemented("multi-tenancy")
        coll = self._collection(request.collection)
        limit = request.limit or DEFAULT_QUERY_LIMIT
        filtered = request.HasField("filters")
        candidates = ([o for o in coll.objects.values() if _matches(request.filters, o)] if filtered
                      else list(coll.objects.values()))
        allowed = {o.uuid for o in candidates} if filtered else None
        wanted = request.offset + limit

        if request.HasField("near_vector"):
            nv = request.near_vector
            hits = _vector_hits(coll, _near_vector_query(nv), allowed, wanted, nv)
        elif request.HasField("near_text"):
            nt = request.near_text
            hits = _vector_hits(coll, self._vectorize(coll, " ".join(nt.query), "nearText"), allowed, wanted, nt)
        elif request.HasField("hybrid_search"):
            hits = self._hybrid_hits(coll, request.hybrid_search, candidates, allowed)
        elif request.HasField("bm25_search"):
            bm = request.bm25_search
            require_all = (bm.HasField("search_operator") and
                           bm.search_operator.operator == base_search_pb2.SearchOperatorOptions.OPERATOR_AND)
            scores = _bm25_scores(bm.query, candidates, list(coll.objects.values()),
                                  list(bm.properties) or coll.text_properties(), require_all)
            hits = [_Hit(coll.objects[u], score=s) for u, s in sorted(scores.items(), key=lambda kv: -kv[1])]
        else:
            # Unsorted listing walks the objects bucket, which is keyed by uuid: uuid order, and
            # ``after`` is the cursor the client's iterator pages with.
            after = str(uuid_lib.UUID(request.after)) if request.after else None
            hits = [_Hit(o) for o in coll.in_uuid_order(after, allowed, wanted)]
        hits = hits[request.offset:request.offset + limit]
        reply = search_get_pb2.SearchReply(results=[self._result(coll, h, request) for h in hits])
        reply.took = time.perf_counter() - started
        return reply

    def _hybrid_hits(self, coll: FakeCollection, hy: base_search_pb2.Hybrid,
                     candidates: list[StoredObject], allowed: set[str] | None) -> list[_Hit]:
        alpha = hy.alpha_param if hy.use_alpha_param else hy.alpha
        query_vec = _vector_from_vectors(hy.vectors)
        if query_vec is None and hy.vector_bytes:
            query_vec = _decode_f32(hy.vector_bytes)
        if query_vec is None and hy.HasField("near_vector"):
            query_vec = _near_vector_query(hy.near_vector)
        if query_vec is None and hy.HasField("near_text"):
            query_vec = self._vectorize(coll, " ".join(hy.near_text.query), "hybrid")
        if query_vec is None and alpha > 0 and hy.query:
            query_vec = self._vectorize(coll, hy.query, "hybrid")
        vector_scores: dict[str, float] = {}
        distances: dict[str, float] = {}
        if query_vec is not None and alpha > 0:
            for o, d in coll.nearest(query_vec, allowed, len(coll.objects)):
                distances[o.uuid] = d
                vector_scores[o.uuid] = 1.0 - d
        keyword_scores: dict[str, float] = {}
        if hy.query and alpha < 1:
            require_all = (hy.HasField("bm25_search_operator") and hy.bm25_search_operator.operator ==
                           base_search_pb2.SearchOperatorOptions.OPERATOR_AND)
            keyword_scores = _bm25_scores(hy.query, candidates, list(coll.objects.values()),
                                          list(hy.properties) or coll.text_properties(), require_all)
        if hy.fusion_type == base_search_pb2.Hybrid.FUSION_TYPE_RANKED:
            def rrf(scores: dict[str, float]) -> dict[str, float]:
                ranked = sorted(scores, key=lambda u: -scores[u])
                return {u: 1.0 / (_RRF_K + i + 1) for i, u in enumerate(ranked)}
            vec_part, kw_part = rrf(vector_scores), rrf(keyword_scores)
        else:
            vec_part, kw_part = _min_max(vector_scores), _min_max(keyword_scores)
        fused = {u: alpha * vec_part.get(u, 0.0) + (1 - alpha) * kw_part.get(u, 0.0)
                 for u in set(vec_part) | set(kw_part)}
        ordered = sorted(fused, key=lambda u: (-fused[u], u))
        return [_Hit(coll.objects[u], distance=distances.get(u), score=fused[u],
                     explain=f"(hybrid) vector {vec_part.get(u, 0.0):.4f} keyword {kw_part.get(u, 0.0):.4f}")
                for u in ordered]

    def _result(self, coll: FakeCollection, hit: _Hit,
                request: search_get_pb2.SearchRequest) -> search_get_pb2.SearchResult:
        obj = hit.obj
        want_all = not request.HasField("properties") or request.properties.return_all_nonref_properties
        names = list(obj.properties) if want_all else [
            p for p in request.properties.non_ref_properties if p in obj.properties]
        types = coll.data_types()
        props = properties_pb2.Properties(fields={n: _value(obj.properties[n], types.get(n)) for n in names})
        md = request.metadata
        meta = search_get_pb2.MetadataResult(id=obj.uuid, id_as_bytes=uuid_lib.UUID(obj.uuid).bytes)
        if hit.distance is not None and (md.distance or md.certainty):
            meta.distance, meta.distance_present = hit.distance, True
            meta.certainty, meta.certainty_present = 1 - hit.distance / 2, True
        if hit.score is not None and (md.score or md.explain_score):
            meta.score, meta.score_present = hit.score, True
            if hit.explain:
                meta.explain_score, meta.explain_score_present = hit.explain, True
        if md.creation_time_unix:
            meta.creation_time_unix, meta.creation_time_unix_present = obj.created_ms, True
        if md.last_update_time_unix:
            meta.last_update_time_unix, meta.last_update_time_unix_present = obj.updated_ms, True
        if obj.vector is not None and (md.vector or md.vectors):
            raw = obj.vector.astype("<f4").tobytes()
            if md.vector:
                meta.vector_bytes = raw
            for name in md.vectors or []:
                meta.vectors.append(base_pb2.Vectors(name=name, vector_bytes=raw,
                                                     type=base_pb2.Vectors.VECTOR_TYPE_SINGLE_FP32))
        return search_get_pb2.SearchResult(properties=search_get_pb2.PropertiesResult(
            non_ref_props=props, target_collection=coll.name), metadata=meta)

    def batch_objects(self, request: batch_pb2.BatchObjectsRequest) -> batch_pb2.BatchObjectsReply:
        """Upsert every object; per-object problems become ``errors`` entries, like a real server."""
        started = time.perf_counter()
        errors = []
        for index, obj in enumerate(request.objects):
            try:
                if obj.tenant:
                    raise _unimplemented("multi-tenancy")
                coll = self._collection(obj.collection)
                props = _batch_object_properties(obj.properties)
                vector = _vector_from_vectors(obj.vectors)
                if vector is None and obj.vector_bytes:
                    vector = _decode_f32(obj.vector_bytes)
                if vector is None and len(obj.vector):
                    vector = np.asarray(obj.vector, dtype=np.float32)
                self._upsert(coll, obj.uuid, props, vector)
            except (_RpcFailure, ValueError) as exc:
                errors.append(batch_pb2.BatchObjectsReply.BatchError(index=index, error=str(exc)))
        return batch_pb2.BatchObjectsReply(took=time.perf_counter() - started, errors=errors)

    def aggregate(self, request: aggregate_pb2.AggregateRequest) -> aggregate_pb2.AggregateReply:
        """Object counts (optionally filtered); metric aggregations answer UNIMPLEMENTED."""
        started = time.perf_counter()
        if request.WhichOneof("search") is not None:
            raise _unimplemented(f"aggregate with {request.WhichOneof('search')}")
        if request.HasField("group_by") or len(request.aggregations):
            raise _unimplemented("aggregate group_by/metrics")
        coll = self._collection(request.collection)
        objects = list(coll.objects.values())
        if request.HasField("filters"):
            objects = [o for o in objects if _matches(request.filters, o)]
        single = aggregate_pb2.AggregateReply.Single()
        if request.objects_count:
            single.objects_count = len(objects)
        return aggregate_pb2.AggregateReply(took=time.perf_counter() - started, single_result=single)

    # -- REST ----------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware])
        app.router.add_get("/v1/meta", self._meta)
        app.router.add_get("/v1/.well-known/ready", self._ok)
        app.router.add_get("/v1/.well-known/live", self._ok)
        app.router.add_get("/v1/.well-known/openid-configuration", self._no_oidc)
        app.router.add_get("/v1/schema", self._schema_list)
        app.router.add_post("/v1/schema", self._schema_create)
        app.router.add_get("/v1/schema/{name}", self._schema_get)
        app.router.add_delete("/v1/schema/{name}", self._schema_delete)
        app.add_routes([r for r in self.injector.control_routes() if r.path != "/__stats__"])
        app.router.add_get("/__stats__", self._stats)
        app.router.add_delete("/__stats__", self._stats_reset)
        return app

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        public = request.path.startswith(("/v1/.well-known/", "/__"))
        if self.api_key is not None and not public and \
                request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"code": 401, "message": "unauthorized: invalid api key"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response(_weaviate_error(message), status=status)

    async def _meta(self, request: web.Request) -> web.StreamResponse:
        plan = await self.injector.draw(request)
        if plan.reset:
            return drop_connection(request)
        if plan.status is not None:
            return self.injector.error_response(request, plan.status, plan.retry_after_s)
        if plan.malformed:
            return web.Response(text="<html>not json</html>", content_type="application/json")
        return web.json_response({
            "hostname": "http://[::]:8080", "modules": {}, "version": WEAVIATE_VERSION,
            "grpcMaxMessageSize": GRPC_MAX_MESSAGE_SIZE,
        })

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _no_oidc(self, request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def _schema_list(self, request: web.Request) -> web.Response:
        return web.json_response({"classes": [c.schema for c in self.collections.values()]})

    async def _schema_get(self, request: web.Request) -> web.Response:
        coll = self.collections.get(_capitalize(request.match_info["name"]))
        if coll is None:
            return web.Response(status=404)
        return web.json_response(coll.schema)

    async def _schema_create(self, request: web.Request) -> web.Response:
        try:
            schema = normalize_class(await request.json())
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return self._error(422, f"invalid class: {exc}")
        if schema["class"] in self.collections:
            return self._error(422, f"class name {schema['class']!r} already exists")
        self.collections[schema["class"]] = FakeCollection(schema)
        return web.json_response(schema)

    async def _schema_delete(self, request: web.Request) -> web.Response:
        self.collections.pop(_capitalize(request.match_info["name"]), None)
        return web.Response(status=200)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _stats_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response(self.stats())


def _weaviate_error(message: str) -> dict[str, Any]:
    return {"error": [{"message": message}]}


def _rest_error_body(request: web.Request, status: int) -> dict[str, Any]:
    return _weaviate_error(f"fake weaviate: injected status {status}")


class _Servicer(weaviate_pb2_grpc.WeaviateServicer):
    """gRPC front: counts the call, checks auth, applies faults, serves, maps failures to codes."""

    def __init__(self, fake: FakeWeaviate) -> None:
        self._fake = fake

    async def _serve(self, kind: str, context: grpc.aio.ServicerContext, work: Callable[[], Any]) -> Any:
        self._fake._bump(f"{kind}_calls")
        try:
            self._fake._check_grpc_auth(context)
            await self._fake._apply_grpc_faults(context)
            return work()
        except _RpcFailure as failure:
            await _abort(context, failure)
        except ValueError as exc:  # e.g. a malformed uuid in the request: a real server's plain error
            await _abort(context, _unknown(str(exc)))
        except asyncio.CancelledError:
            self._fake._bump("cancelled_calls")
            raise

    async def Search(self, request: search_get_pb2.SearchRequest,  # noqa: N802 (gRPC method name)
                     context: grpc.aio.ServicerContext) -> search_get_pb2.SearchReply:
        return await self._serve("search", context, lambda: self._fake.search(request))

    async def BatchObjects(self, request: batch_pb2.BatchObjectsRequest,  # noqa: N802
                           context: grpc.aio.ServicerContext) -> batch_pb2.BatchObjectsReply:
        return await self._serve("batch", context, lambda: self._fake.batch_objects(request))

    async def Aggregate(self, request: aggregate_pb2.AggregateRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> aggregate_pb2.AggregateReply:
        return await self._serve("aggregate", context, lambda: self._fake.aggregate(request))


async def _abort(context: grpc.aio.ServicerContext, failure: _RpcFailure) -> NoReturn:
    await context.abort(failure.code, failure.message)
    raise AssertionError("unreachable: context.abort raises")


# --------------------------------------------------------------------------------------------
# Standalone entry point


async def _serve_forever(args: argparse.Namespace) -> None:
    vectorizer = hashing_vectorizer(args.hash_dim) if args.hash_dim else None
    fake = FakeWeaviate(vectorizer=vectorizer, seed=args.seed, api_key=args.api_key)
    await fake.start(args.host, args.http_port, args.grpc_port)
    print(json.dumps({"http_port": fake.http_port, "grpc_port": fake.grpc_port}), flush=True)
    await serve_until_signalled(fake.stop)


def main(argv: list[str] | None = None) -> None:
    """``python -m chaos.stubs.weaviate``: serve until SIGINT/SIGTERM; prints the bound ports as JSON."""
    parser = argparse.ArgumentParser(prog="python -m chaos.stubs.weaviate", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="seed for faults.error_rate")
    parser.add_argument("--api-key", default=None, help="require this API key (REST and gRPC)")
    parser.add_argument("--hash-dim", type=int, default=0,
                        help="enable near_text with a hashing vectorizer of this dimension (0 = none)")
    asyncio.run(_serve_forever(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
