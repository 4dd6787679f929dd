"""The Prometheus sink: a prometheus-client collector over the telemetry's cumulative state.

Nothing is recorded here: a scrape folds what the request path buffered (``Telemetry._drain``) and
builds the families from the running totals, so Prometheus and DogStatsD show the same numbers.
"""
from __future__ import annotations

from bisect import bisect_left
from functools import partial
from typing import Any, Iterator, Protocol

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            Metric)
from prometheus_client.utils import floatToGoString

from gateway.telemetry.catalogue import CATALOGUE

PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # "text/plain; version=0.0.4; charset=utf-8"
# Latency buckets (ms, as recorded) for the Prometheus histograms; exposed in seconds (base units:
# ``le="0.005"``). Datadog distributions need none and stay in ms.
MS_BUCKETS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
              60000.0)
SECONDS_BOUNDS = tuple(floatToGoString(ms / 1000.0) for ms in MS_BUCKETS) + ("+Inf",)
bucket_of = partial(bisect_left, MS_BUCKETS)  # value (ms) → index of its Prometheus bucket


class Histogram:
    """Per-bucket counts (not cumulative; the last is +Inf) and the sum of one series."""

    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(MS_BUCKETS) + 1)
        self.sum = 0.0

    def add(self, values: list[float]) -> None:
        buckets = self.buckets
        for bucket in map(bucket_of, values):
            buckets[bucket] += 1
        self.sum += sum(values)


class FamilySource(Protocol):
    """What the collector reads: :class:`gateway.telemetry.core.Telemetry` (which imports this module)."""

    def _families(self) -> list[Metric]: ...


class PrometheusView:
    """A prometheus-client collector over the telemetry's cumulative state."""

    def __init__(self, telemetry: FamilySource) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        yield from self.telemetry._families()


def build_families(namespace: str, totals: list[dict[tuple[str, ...], Any]],
                   gauges: dict[tuple[int, tuple[str, ...]], float]) -> Iterator[Metric]:
    """One family per catalogue metric from the cumulative ``totals`` (per catalogue slot) and ``gauges``."""
    for index, spec in enumerate(CATALOGUE):
        name, doc, tags = spec.prometheus_name(namespace), spec.description, list(spec.tags)
        if spec.type == "count":
            counter = CounterMetricFamily(name, doc, labels=tags)
            for labels, total in list(totals[index].items()):
                counter.add_metric(list(labels), total)
            yield counter
        elif spec.type == "gauge":
            gauge = GaugeMetricFamily(name, doc, labels=tags)
            for (i, labels), value in gauges.items():
                if i == index:
                    gauge.add_metric(list(labels), value)
            yield gauge
        else:
            histogram = HistogramMetricFamily(name, doc, labels=tags)
            for labels, hist in list(totals[index].items()):
                cumulative, running = [], 0
                for bound, n in zip(SECONDS_BOUNDS, hist.buckets):
                    running += n
                    cumulative.append((bound, running))
                histogram.add_metric(list(labels), cumulative, sum_value=hist.sum / 1000.0)  # ms → s
            yield histogram
