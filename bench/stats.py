"""Percentiles and medians: small, exact, and explicit about empty input.

Latencies arrive in nanoseconds and leave in milliseconds.  Percentiles use
the nearest-rank definition on the full sorted sample (no histogram
bucketing), so p99.9 of 750,000 deliveries is an actual observed delivery.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def nearest_rank(sorted_values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile of already sorted values (nearest rank); nan if empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def p50_ms(values: Sequence[int]) -> float:
    """The median (nearest rank) of a latency sample given in ns, in ms; nan if empty."""
    return nearest_rank(sorted(values), 50) / 1e6 if len(values) else math.nan


def latency_summary(ns: Iterable[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max in ms of a latency sample given in ns."""
    values = sorted(ns)
    out = {f"p{_label(p)}": nearest_rank(values, p) / 1e6 for p in PERCENTILES}
    out["max"] = values[-1] / 1e6 if values else math.nan
    out["count"] = len(values)
    return out


def cdf_points(ns: Iterable[int], points: int = 400) -> list[float]:
    """``points`` evenly spaced order statistics (ms), enough to draw a CDF.

    The tail is kept denser than the middle (the last 1 % gets a quarter of
    the points) because that is where the systems differ.
    """
    values = sorted(ns)
    if not values:
        return []
    return [nearest_rank(values, max(r, 1e-9)) / 1e6 for r in cdf_ranks(points)]


def cdf_ranks(points: int = 400) -> list[float]:
    """The percentile ranks that ``cdf_points`` samples at, for plotting."""
    body = points * 3 // 4
    tail = points - body
    return [i / body * 99.0 for i in range(body)] + [
        99.0 + i / (tail - 1) * 1.0 for i in range(tail)
    ]


def median(values: Iterable[float | None]) -> float:
    """Median of the values that exist; nan if none do."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def _label(pct: float) -> str:
    return str(int(pct)) if pct == int(pct) else str(pct)
