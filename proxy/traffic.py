"""The counters of one destination (an experiment arm, or a route's upstream when no
experiment applies): responses by status class and upstream latency, bumped on the request
path as a list index and a histogram bucket, read by `ProxyMetrics` when scraped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from abgate.config.metrics_catalogue import LATENCY_BUCKETS
from abgate.state.histogram import Histogram

if TYPE_CHECKING:
    from abgate.proxy.measure import ArmRecorder

STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


class TrafficStats:
    """Responses and upstream latency of one destination (an experiment arm, or a route's
    upstream when no experiment applies)."""

    __slots__ = ("arm", "experiment", "latency", "recorder", "statuses", "upstream")

    def __init__(self, experiment: str, arm: str, upstream: str) -> None:
        self.experiment = experiment
        self.arm = arm
        self.upstream = upstream
        self.statuses = [0] * len(STATUS_CLASSES)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.recorder: ArmRecorder | None = None  # experiment arms: sums for the statistics

    def count(self, status: int, upstream_seconds: float | None) -> None:
        """An exchange with this upstream, counted: an answer it served, or a treatment try
        that a fallback then answered. Arm statistics are the `recorder`'s, fed once per
        request by the outcome sink."""
        self.statuses[status // 100 if 100 <= status < 600 else 0] += 1
        if upstream_seconds is not None:
            self.latency.observe(upstream_seconds)
