"""bench.stats: the one percentile rule (nearest rank) and the median helpers every table uses."""

from __future__ import annotations

import math

from bench.stats import finite, median, percentile, spread


def test_percentile_is_nearest_rank_not_interpolated() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0  # interpolation would say 2.5
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_median_and_spread_skip_nan_and_non_numbers() -> None:
    values = [3.0, math.nan, 1.0, None, "x", 2.0, True]
    assert finite(values) == [3.0, 1.0, 2.0]
    assert median(values) == 2.0
    assert spread(values) == (2.0, 1.0, 3.0)
    assert all(math.isnan(v) for v in spread([math.nan]))
