"""Metrics: one catalogue, two sinks (DogStatsD and Prometheus).

- :mod:`~gateway.telemetry.catalogue` — every metric, tag key and enum-like tag value, declared once;
- :mod:`~gateway.telemetry.core` — :class:`Telemetry`, the recording facade (the request path's only cost);
- :mod:`~gateway.telemetry.statsd` — the DogStatsD client and the formatting of one export;
- :mod:`~gateway.telemetry.prometheus` — the ``/metrics`` collector;
- :mod:`~gateway.telemetry.docs` — the catalogue table in docs/observability.md.
"""
from gateway.telemetry.catalogue import (BREAKER_STATE_VALUES, BREAKER_STATES, CATALOGUE, FAILURE_REASONS, MODES,
                                         OUTCOMES, UNMATCHED_ROUTE, MetricSpec, route_tag)
from gateway.telemetry.core import Telemetry, request_retries
from gateway.telemetry.docs import DOC_MARKERS, catalogue_markdown, catalogue_rows, render_doc
from gateway.telemetry.prometheus import MS_BUCKETS, PROMETHEUS_CONTENT_TYPE

__all__ = ["BREAKER_STATES", "BREAKER_STATE_VALUES", "CATALOGUE", "DOC_MARKERS", "FAILURE_REASONS", "MODES",
           "MS_BUCKETS", "OUTCOMES", "PROMETHEUS_CONTENT_TYPE", "UNMATCHED_ROUTE", "MetricSpec", "Telemetry",
           "catalogue_markdown", "catalogue_rows", "render_doc", "request_retries", "route_tag"]
