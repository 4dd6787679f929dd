"""The gRPC half: ``Search`` / ``BatchObjects`` / ``Aggregate`` (the client's own
``weaviate.proto.v1`` stubs), their wire codecs and filters, and the data-plane faults."""
from __future__ import annotations

import asyncio
import fnmatch
import struct
import time
import uuid as uuid_lib
from typing import Any, Callable, Iterable, NoReturn

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2
from weaviate.proto.v1 import (aggregate_pb2, base_pb2, base_search_pb2, batch_pb2, properties_pb2, search_get_pb2,
                               weaviate_pb2_grpc)

from chaos.stubs.weaviate.core import StandIn
from chaos.stubs.weaviate.store import (_RRF_K, DEFAULT_QUERY_LIMIT, FakeCollection, StoredObject, _as_list,
                                        _bm25_scores, _Hit, _infer_data_type, _min_max, _RpcFailure, _unimplemented,
                                        _unknown)

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


def _vector_hits(coll: FakeCollection, query: np.ndarray, allowed: set[str] | None, k: int,
                 opts: base_search_pb2.NearVector | base_search_pb2.NearTextSearch) -> list[_Hit]:
    limits = []
    if opts.HasField("distance"):
        limits.append(opts.distance)
    if opts.HasField("certainty"):
        limits.append(2 * (1 - opts.certainty))  # certainty = 1 - distance / 2
    nearest = coll.nearest(query, allowed, k, min(limits) if limits else None)
    return [_Hit(o, distance=d) for o, d in nearest]



class GrpcHalf(StandIn):
    """Search, BatchObjects and Aggregate over the shared collections, with the data-plane faults."""

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



class _Servicer(weaviate_pb2_grpc.WeaviateServicer):
    """gRPC front: counts the call, checks auth, applies faults, serves, maps failures to codes."""

    def __init__(self, fake: GrpcHalf) -> None:
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


