"""Optional OpenTelemetry tracing: a request span with stage children, labelled with mode/degradations."""
from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import make_settings, state_of

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider():
    # The global provider can be set once per process; this module owns it.
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(tp)
    yield tp


async def test_spans_per_request_and_stage(gateway_factory, data_dir):
    EXPORTER.clear()
    client = await gateway_factory(make_settings(data_dir, **{"telemetry.tracing": "otel"}))
    state_of(client).guards["vector_db"].breaker.force_open()
    resp = await client.post("/v1/query", json={"query": "green tea"}, headers={"X-Request-Id": "trace-me-1"})
    assert resp.status == 200
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    root = spans["rag.request"]
    assert root.attributes["rag.request_id"] == "trace-me-1"
    assert root.attributes["rag.mode"] == "extractive" and root.attributes["rag.degraded"] is True
    assert "vector_db:breaker_open" in root.attributes["rag.degradations"]
    for stage in ("rag.retrieve", "rag.vector_search", "rag.keyword_search", "rag.extractive"):
        assert spans[stage].context.trace_id == root.context.trace_id
    assert spans["rag.vector_search"].parent.span_id == spans["rag.retrieve"].context.span_id
    assert "rag.embed" not in spans  # the open vector DB breaker skips the (useless) embedding


async def test_tracing_off_makes_no_spans(gateway_factory, data_dir):
    EXPORTER.clear()
    client = await gateway_factory(make_settings(data_dir))
    assert (await client.post("/v1/query", json={"query": "green tea"})).status == 200
    assert EXPORTER.get_finished_spans() == ()
