"""Optional OpenTelemetry tracing (``telemetry.tracing: otel``; off by default).

With tracing on, each request is a span (``rag.request``) with a child span per pipeline stage
(embed, vector_search, keyword_search, generate, …) carrying the request id, mode and degradations.
Only the OpenTelemetry *API* is used here: spans go wherever the process's SDK sends them — run under
``opentelemetry-instrument rag-sidecar serve`` (opentelemetry-distro) or configure the SDK yourself, and
set ``OTEL_EXPORTER_OTLP_ENDPOINT`` for the Datadog Agent's OTLP intake or any collector. Off, a span
is a no-op context manager that costs one attribute check.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator


class Tracer:
    def __init__(self, mode: str = "off") -> None:
        self.enabled = mode == "otel"
        self._tracer: Any = None
        if self.enabled:
            from opentelemetry import trace  # installed with the anthropic SDK; imported only when on

            self._tracer = trace.get_tracer("rag-sidecar")

    def span(self, name: str, **attributes: Any) -> ContextManager[Any]:
        """A span named ``name`` as the current span's child (no-op when tracing is off)."""
        if not self.enabled:
            return nullcontext()
        return self._span(name, attributes)

    @contextmanager
    def _span(self, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
        with self._tracer.start_as_current_span(name) as span:
            for key, value in attributes.items():
                if value is not None:
                    span.set_attribute(key, value)
            yield span


NOOP = Tracer("off")
