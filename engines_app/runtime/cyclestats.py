"""Cycle durations in a small fixed-bucket histogram, one per runner: cheap to observe on
every cycle, small enough to write with the runner's heartbeat."""

from __future__ import annotations

from bisect import bisect_left

# Seconds; upper bounds like Prometheus' ``le``. A paper-trading cycle is sub-millisecond,
# a real one waits on a feed or an exchange.
CYCLE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class CycleHistogram:
    """Count cycle durations per bucket; the last count is for durations above every bound."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = CYCLE_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> dict:
        """JSON-ready: bounds, per-bucket (not cumulative) counts, sum."""
        return {"buckets": list(self.buckets), "counts": list(self.counts), "sum": self.sum}
