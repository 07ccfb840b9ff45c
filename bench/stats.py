"""Small statistics helpers shared by every benchmark (one method for every system)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


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
