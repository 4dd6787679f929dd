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
from chaos.stubs.weaviate.grpc_api import grpc_code_for_status
from chaos.stubs.weaviate.server import FakeWeaviate, main
from chaos.stubs.weaviate.store import FakeCollection, StoredObject, Vectorizer, hashing_vectorizer, normalize_class

__all__ = ["FakeCollection", "FakeWeaviate", "StoredObject", "Vectorizer", "grpc_code_for_status", "hashing_vectorizer",
           "main", "normalize_class"]
