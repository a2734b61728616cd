"""Latency statistics, with the definitions stated (they differ between tools).

- percentile p: nearest rank on the sorted samples, the value at rank ceil(p/100 * n) (1-based),
  so p99 of 100 samples is the 99th smallest and p100 the largest; no interpolation.
- median: the middle sample, or the mean of the two middle ones for an even count.
- throughput: batch * queries / wall time of the timed loop (warm-up excluded), as trtexec defines it.
- coefficient of variation: sample standard deviation (n-1) / mean.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

UNSTABLE_CV = 0.05


def percentile(samples, p: float) -> float:
    if not samples:
        raise ValueError("no samples")
    if not 0 < p <= 100:
        raise ValueError("p must be in (0, 100]")
    ordered = sorted(samples)
    rank = math.ceil(p / 100 * len(ordered))
    return float(ordered[max(rank, 1) - 1])


def median(samples) -> float:
    return float(statistics.median(samples))


@dataclass
class LatencyStats:
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    cv: float
    queries: int
    wall_s: float
    batch: int

    @property
    def qps(self) -> float:
        return self.queries / self.wall_s

    @property
    def images_per_s(self) -> float:
        return self.batch * self.queries / self.wall_s

    @property
    def unstable(self) -> bool:
        return self.cv > UNSTABLE_CV

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(qps=self.qps, images_per_s=self.images_per_s, unstable=self.unstable)
        return d


def summarize(latencies_s, wall_s: float, batch: int) -> LatencyStats:
    ms = [1e3 * t for t in latencies_s]
    mean = statistics.fmean(ms)
    cv = statistics.stdev(ms) / mean if len(ms) > 1 and mean > 0 else 0.0
    return LatencyStats(min(ms), mean, median(ms), percentile(ms, 90), percentile(ms, 95), percentile(ms, 99),
                        cv, len(ms), wall_s, batch)
