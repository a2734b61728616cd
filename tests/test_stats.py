"""Latency statistics against hand-computed values."""

import math

import pytest

from deploykit.stats import median, percentile, summarize


def test_percentile_is_nearest_rank():
    samples = list(range(1, 101))  # 1..100
    assert percentile(samples, 50) == 50
    assert percentile(samples, 90) == 90
    assert percentile(samples, 99) == 99
    assert percentile(samples, 100) == 100
    # 10 samples: p95 is rank ceil(9.5) = 10, p90 rank 9, p1 rank 1.
    ten = [7, 1, 9, 3, 5, 2, 8, 4, 10, 6]
    assert percentile(ten, 95) == 10
    assert percentile(ten, 90) == 9
    assert percentile(ten, 1) == 1
    assert percentile([4.0], 99) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1, 2], 0)


def test_median_even_and_odd():
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 3, 2]) == 2.5


def test_summary_by_hand():
    s = summarize([0.001, 0.002, 0.003, 0.004], wall_s=0.02, batch=8)
    assert (s.min_ms, s.mean_ms, s.median_ms) == pytest.approx((1.0, 2.5, 2.5))
    assert s.p99_ms == pytest.approx(4.0) and s.p90_ms == pytest.approx(4.0)
    assert s.qps == pytest.approx(4 / 0.02)
    assert s.images_per_s == pytest.approx(8 * 4 / 0.02)
    sample_sd = math.sqrt(sum((x - 2.5) ** 2 for x in [1, 2, 3, 4]) / 3)
    assert s.cv == pytest.approx(sample_sd / 2.5)
    assert s.unstable
