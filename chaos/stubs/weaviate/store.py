"""The stand-in's database: collections in memory (schema, objects, one vector each), BM25 and
vector scoring, and the errors a real server reports. Both halves (REST, gRPC) serve it."""
from __future__ import annotations

import bisect
import copy
import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import numpy as np

WEAVIATE_VERSION = "1.32.0"
GRPC_MAX_MESSAGE_SIZE = 104_858_000  # what a default 1.32 server reports in /v1/meta
DEFAULT_QUERY_LIMIT = 10  # Weaviate's QUERY_DEFAULTS_LIMIT
DEFAULT_VECTORIZER_MODULE = "text2vec-transformers"
_BM25_K1, _BM25_B = 1.2, 0.75
_RRF_K = 60
_TOKEN = re.compile(r"\w+", re.UNICODE)

Vectorizer = Callable[[str], np.ndarray]

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


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]



# --------------------------------------------------------------------------------------------
# Scoring


def _tokens(value: Any) -> list[str]:
    return [t for v in _as_list(value) for t in _TOKEN.findall(str(v).lower())]


def _bm25_scores(query: str, objects: list[StoredObject], corpus: list[StoredObject],
                 properties: list[str], require_all: bool) -> dict[str, float]:
    """BM25 over ``properties`` (``name^2`` boosts a property), statistics from ``corpus``."""
    weighted: list[tuple[str, float]] = []
    for p in properties:
        name, _, boost_text = p.partition("^")
        weighted.append((name, float(boost_text) if boost_text else 1.0))
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


