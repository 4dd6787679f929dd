"""Optional OpenTelemetry tracing: a request span with stage children, labelled with mode/degradations."""
from __future__ import annotations

import re

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


@pytest.mark.parametrize("llm", ["extractive", "anthropic"])
async def test_tracing_off_makes_no_spans(gateway_factory, data_dir, fake_anthropic, llm):
    """Not even the anthropic SDK's own span per call, although a global provider is set here (as under
    ``opentelemetry-instrument``): it would be a trace of its own, joined to no request."""
    from tests.conftest import anthropic_overrides

    EXPORTER.clear()
    overrides = anthropic_overrides(fake_anthropic, **{"cache.enabled": False}) if llm == "anthropic" else {}
    client = await gateway_factory(make_settings(data_dir, **overrides))
    resp = await client.post("/v1/query", json={"query": "green tea"})
    assert resp.status == 200 and resp.headers["X-RAG-Mode"] == ("full" if llm == "anthropic" else "extractive")
    assert EXPORTER.get_finished_spans() == ()


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def test_incoming_traceparent_is_continued_and_injected_upstream(gateway_factory, data_dir, fake_anthropic):
    """One trace from the chatbot through the sidecar to the LLM: the caller's W3C traceparent is the
    request span's parent, and the LLM call carries a traceparent of the same trace."""
    from tests.conftest import anthropic_overrides

    EXPORTER.clear()
    client = await gateway_factory(make_settings(data_dir, **{"telemetry.tracing": "otel"},
                                                 **anthropic_overrides(fake_anthropic, **{"cache.enabled": False})))
    resp = await client.post("/v1/query", json={"query": "green tea"},
                             headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert resp.status == 200
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    root = spans["rag.request"]
    assert f"{root.context.trace_id:032x}" == TRACE_ID and f"{root.parent.span_id:016x}" == PARENT_ID
    assert root.kind.name == "SERVER"
    [llm_call] = [r for r in fake_anthropic.requests if r.path == "/v1/messages"]
    version, trace_id, span_id, _ = llm_call.headers["traceparent"].split("-")
    assert trace_id == TRACE_ID and span_id != PARENT_ID  # a child span of ours, same trace
    assert root.attributes["rag.model"] == "claude-sonnet-4-6"
    assert root.attributes["rag.breaker.llm:claude-sonnet-4-6"] == "closed"  # one guard per model
    # With tracing on, the SDK's own span of the call is in the same trace, under the generate stage.
    [sdk_span] = [s for s in EXPORTER.get_finished_spans() if s.name.startswith("anthropic.")]
    assert sdk_span.parent.span_id == spans["rag.generate"].context.span_id


async def test_5xx_sets_the_span_status_and_logs_carry_the_trace(gateway_factory, data_dir, capsys):
    """A 503 (ladder exhausted) marks the request span ERROR; the JSON log line of the request carries
    dd.trace_id/dd.span_id of that span, service/env/version and a timestamp Datadog parses."""
    import io
    import json
    import logging

    from gateway.logs import JsonFormatter, resource_fields
    from gateway.config import TelemetryConfig

    EXPORTER.clear()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(resource_fields(TelemetryConfig(env="prod", version="1.2.3"))))
    access = logging.getLogger("rag_sidecar.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        client = await gateway_factory(make_settings(data_dir, **{"telemetry.tracing": "otel",
                                                                 "fallback.keyword_index": False}))
        state_of(client).guards["vector_db"].breaker.force_open()
        resp = await client.post("/v1/query", json={"query": "green tea"},
                                 headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        assert resp.status == 503
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    [root] = [s for s in EXPORTER.get_finished_spans() if s.name == "rag.request"]
    assert root.status.status_code.name == "ERROR"
    [line] = [json.loads(x) for x in stream.getvalue().splitlines() if '"event":"request"' in x]
    assert line["dd.trace_id"] == str(int(TRACE_ID, 16) & 0xFFFFFFFFFFFFFFFF)
    assert line["dd.span_id"] == str(root.context.span_id) and line["trace_id"] == TRACE_ID
    assert (line["service"], line["env"], line["version"]) == ("rag-sidecar", "prod", "1.2.3")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["timestamp"])


def test_resource_names_the_service_from_the_dogstatsd_settings():
    from gateway.config import TelemetryConfig
    from gateway.tracing import make_provider

    provider = make_provider(TelemetryConfig(service="rag-sidecar", env="staging", version="2.0.1"))
    attrs = provider.resource.attributes
    assert (attrs["service.name"], attrs["deployment.environment"], attrs["service.version"]) == (
        "rag-sidecar", "staging", "2.0.1")
