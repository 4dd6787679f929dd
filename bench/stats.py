"""Summary statistics shared by every section (latencies in milliseconds)."""
from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (``q`` in [0, 100]); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize_ms(values_ms: Sequence[float]) -> dict[str, float | int]:
    """count, mean, p50, p90, p99, max of latencies in ms (rounded to µs)."""
    s = sorted(values_ms)
    if not s:
        return {"count": 0, "mean_ms": math.nan, "p50_ms": math.nan, "p90_ms": math.nan,
                "p99_ms": math.nan, "max_ms": math.nan}
    return {"count": len(s), "mean_ms": round(sum(s) / len(s), 3), "p50_ms": round(percentile(s, 50), 3),
            "p90_ms": round(percentile(s, 90), 3), "p99_ms": round(percentile(s, 99), 3),
            "max_ms": round(s[-1], 3)}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b
