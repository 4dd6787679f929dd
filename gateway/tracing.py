"""Optional OpenTelemetry tracing (``telemetry.tracing: otel``; off by default).

With tracing on, each request is a SERVER span (``rag.request``) that *continues* the caller's W3C
``traceparent`` (one trace from the chatbot through the sidecar), with a child span per pipeline stage
(embed, vector_search, keyword_search, generate, …). Outgoing calls carry the current span's
``traceparent`` (:func:`outgoing_headers`: the embedder, the LLM and ``/v1/messages`` upstream; the
Weaviate client takes headers only at connect time, so its calls are not joined). A 5xx sets the
request span's status to ERROR; its attributes say the mode, degradations, retries per dependency,
breaker states, model and chunk count.

Spans go wherever the process's SDK sends them: run under ``opentelemetry-instrument`` or configure the
SDK yourself (``OTEL_EXPORTER_OTLP_ENDPOINT`` for the Datadog Agent's OTLP intake). When no SDK
provider is configured and ``opentelemetry-sdk`` is installed, one is created whose resource carries
``service.name`` / ``deployment.environment`` / ``service.version`` from the same ``telemetry.service``
/ ``env`` / ``version`` settings as the DogStatsD tags (``OTEL_RESOURCE_ATTRIBUTES`` still merges in).
Off, a span is a no-op context manager that costs one attribute check.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ContextManager, Iterator, Mapping

if TYPE_CHECKING:
    from gateway.config import TelemetryConfig

_ENABLED = False  # any Tracer in this process traces: outgoing_headers() injects


def service_fields(config: "TelemetryConfig") -> dict[str, str]:
    """``service`` / ``env`` / ``version`` as the DogStatsD tags carry them (unset ones left out): the one
    source for the log lines' fields and the trace resource (Datadog's unified service tagging)."""
    out = {"service": config.service}
    if config.env:
        out["env"] = config.env
    if config.version:
        out["version"] = config.version
    return out


_OTEL_NAMES = {"service": "service.name", "env": "deployment.environment", "version": "service.version"}


def resource_attributes(config: "TelemetryConfig | None") -> dict[str, str]:
    """OTel resource attributes from the DogStatsD tag settings (service, env, version)."""
    if config is None:
        return {"service.name": "rag-sidecar"}
    return {_OTEL_NAMES[k]: v for k, v in service_fields(config).items()}


def make_provider(config: "TelemetryConfig | None") -> Any:
    """An SDK TracerProvider whose resource names this service (None without opentelemetry-sdk)."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return None
    return TracerProvider(resource=Resource.create(resource_attributes(config)))


class Tracer:
    def __init__(self, mode: str = "off", config: "TelemetryConfig | None" = None) -> None:
        global _ENABLED
        self.enabled = mode == "otel"
        self._tracer: Any = None
        if self.enabled:
            from opentelemetry import trace  # installed with the anthropic SDK; imported only when on

            if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):  # no SDK configured yet
                provider = make_provider(config)
                if provider is not None:
                    trace.set_tracer_provider(provider)
            self._tracer = trace.get_tracer("rag-sidecar")
            _ENABLED = True

    def span(self, name: str, **attributes: Any) -> ContextManager[Any]:
        """A span named ``name`` as the current span's child (no-op when tracing is off)."""
        if not self.enabled:
            return nullcontext()
        return self._span(name, attributes, None)

    def server_span(self, name: str, headers: Mapping[str, str], **attributes: Any) -> ContextManager[Any]:
        """The request's span, continuing the W3C ``traceparent`` in ``headers`` (a new trace without one)."""
        if not self.enabled:
            return nullcontext()
        from opentelemetry.propagate import extract

        return self._span(name, attributes, extract(dict(headers)), server=True)

    @contextmanager
    def _span(self, name: str, attributes: dict[str, Any], context: Any, server: bool = False) -> Iterator[Any]:
        from opentelemetry.trace import SpanKind

        kind = SpanKind.SERVER if server else SpanKind.INTERNAL
        with self._tracer.start_as_current_span(name, context=context, kind=kind) as span:
            for key, value in attributes.items():
                if value is not None:
                    span.set_attribute(key, value)
            yield span


def mark_error(span: Any, status: int) -> None:
    """ERROR status on the span of a request answered with a 5xx."""
    if span is not None and status >= 500:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


def outgoing_headers() -> dict[str, str]:
    """``traceparent``/``tracestate`` of the current span for an upstream call ({} when tracing is off)."""
    if not _ENABLED:
        return {}
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def log_fields(ids: tuple[int, int] | None) -> dict[str, str]:
    """Log attributes joining a line to its span: ``dd.trace_id`` / ``dd.span_id`` (decimal, the low 64 bits
    of the OTel ids, as Datadog correlates them) and ``trace_id`` / ``span_id`` (OTel hex)."""
    if ids is None:
        return {}
    trace_id, span_id = ids
    return {"dd.trace_id": str(trace_id & 0xFFFFFFFFFFFFFFFF), "dd.span_id": str(span_id),
            "trace_id": f"{trace_id:032x}", "span_id": f"{span_id:016x}"}


def span_ids(span: Any) -> tuple[int, int] | None:
    """(trace_id, span_id) of ``span`` (None for no span / tracing off)."""
    if span is None:
        return None
    ctx = span.get_span_context()
    return (ctx.trace_id, ctx.span_id) if ctx.is_valid else None


def current_ids() -> tuple[int, int] | None:
    """(trace_id, span_id) of the current span, or None (tracing off, no span)."""
    if not _ENABLED:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return (ctx.trace_id, ctx.span_id) if ctx.is_valid else None


NOOP = Tracer("off")
