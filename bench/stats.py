"""Small statistics helpers shared by every benchmark (one method for every system)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def finite(values: Iterable[object]) -> list[float]:
    """The numbers among `values` that are not NaN (a failed run records NaN or nothing)."""
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isnan(value):
            out.append(float(value))
    return out


def median(values: Iterable[object]) -> float:
    """The nearest-rank median of the numbers among `values`, NaN when there are none."""
    return percentile(finite(values), 50)


def spread(values: Iterable[object]) -> tuple[float, float, float]:
    """(median, min, max) of the numbers among `values`; NaNs when there are none."""
    good = finite(values)
    if not good:
        return math.nan, math.nan, math.nan
    return percentile(good, 50), min(good), max(good)


def latency_summary_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of latencies given in seconds, returned in milliseconds."""
    return {
        "p50_ms": percentile(latencies_s, 50) * 1000.0,
        "p99_ms": percentile(latencies_s, 99) * 1000.0,
        "max_ms": (max(latencies_s) * 1000.0) if latencies_s else math.nan,
        "samples": float(len(latencies_s)),
    }


def ratio(ours: float, theirs: float) -> float:
    if not theirs or math.isnan(theirs) or math.isnan(ours):
        return math.nan
    return ours / theirs
