"""Request-path measurements as plain in-memory counters, turned into Prometheus families only
when scraped.

prometheus-client's own Counter/Histogram take a lock on every `inc`/`observe` and look labels
up in a dict; here each (experiment, arm, upstream) gets its counters once, at wiring time, and
recording is a list index increment on one event loop, no lock and no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy.measure import ArmRecorder
from proxy.outcome import Outcome
from state.histogram import Histogram

# Decision endpoints answer in milliseconds to seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# What abgate itself adds to a request: tens of microseconds when healthy.
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
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


class ProxyMetrics(Collector):
    """All counters of one data-plane process; registered once as a Prometheus collector."""

    def __init__(self) -> None:
        self._traffic: dict[tuple[str, str, str], TrafficStats] = {}
        self.overhead = Histogram(OVERHEAD_BUCKETS)
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.local_responses: dict[tuple[int, str], int] = {}
        self.fallbacks: dict[tuple[str, str], int] = {}
        self.breaker_transitions: dict[tuple[str, str, str], int] = {}
        self._gauges: list[Callable[[], Iterable[Metric]]] = []

    def traffic(self, experiment: str, arm: str, upstream: str) -> TrafficStats:
        """The counters of one destination; the same object across config reloads."""
        key = (experiment, arm, upstream)
        stats = self._traffic.get(key)
        if stats is None:
            stats = self._traffic[key] = TrafficStats(experiment, arm, upstream)
        return stats

    def latency_counts(self) -> dict[str, dict[str, list[int]]]:
        """Each experiment arm's latency histogram (LATENCY_BUCKETS, then +Inf), summed over
        its upstreams: what the statistics worker's timeline reads once per tick."""
        out: dict[str, dict[str, list[int]]] = {}
        for stats in self._traffic.values():
            if not stats.experiment:
                continue
            arms = out.setdefault(stats.experiment, {})
            counts = arms.get(stats.arm)
            if counts is None:
                arms[stats.arm] = list(stats.latency.counts)
            else:
                arms[stats.arm] = [a + b for a, b in zip(counts, stats.latency.counts, strict=True)]
        return out

    def __call__(self, outcome: Outcome) -> None:
        """The sink of the counters read from each request's record (proxy/outcome.py)."""
        if outcome.local:
            self.count_local_response(outcome.status, outcome.local)
        reason = outcome.fallback
        if reason:
            assigned = outcome.assigned
            self.count_fallback(assigned.experiment, reason)
            if outcome.tried is not None:  # the treatment did answer, or fail: counted there
                assigned.stats.count(*outcome.tried)
                if not reason.startswith("status-"):
                    self.count_upstream_error(assigned.pool.name, reason)
        if outcome.error:
            self.count_upstream_error(outcome.served.pool.name, outcome.error)
        if outcome.overhead is not None:
            self.overhead.observe(outcome.overhead)

    def count_upstream_error(self, upstream: str, kind: str) -> None:
        key = (upstream, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def count_local_response(self, status: int, reason: str) -> None:
        key = (status, reason)
        self.local_responses[key] = self.local_responses.get(key, 0) + 1

    def count_fallback(self, experiment: str, reason: str) -> None:
        key = (experiment, reason)
        self.fallbacks[key] = self.fallbacks.get(key, 0) + 1

    def count_breaker_transition(self, upstream: str, old: str, new: str) -> None:
        key = (upstream, old, new)
        self.breaker_transitions[key] = self.breaker_transitions.get(key, 0) + 1

    def add_gauges(self, source: Callable[[], Iterable[Metric]]) -> None:
        """Families computed from live state at scrape time (percentages, pools)."""
        self._gauges.append(source)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "abgate_requests",
            "Proxied requests by experiment, arm, upstream and status class "
            "(experiment and arm are empty on routes without an experiment).",
            labels=["experiment", "arm", "upstream", "status_class"],
        )
        latency = HistogramMetricFamily(
            "ab_testing_decision_latency_seconds",
            "Upstream time of each decision, from sending the request to the whole response.",
            labels=["experiment", "arm"],
        )
        for stats in self._traffic.values():
            for status_class, count in zip(STATUS_CLASSES, stats.statuses, strict=True):
                if count:
                    requests.add_metric(
                        [stats.experiment, stats.arm, stats.upstream, status_class], count
                    )
            if stats.experiment:
                latency.add_metric(
                    [stats.experiment, stats.arm], stats.latency.cumulative(), stats.latency.sum
                )
        yield requests
        yield latency
        overhead = HistogramMetricFamily(
            "abgate_proxy_overhead_seconds",
            "Time abgate adds to a request: its whole handling minus the upstream's part.",
        )
        overhead.add_metric([], self.overhead.cumulative(), self.overhead.sum)
        yield overhead
        errors = CounterMetricFamily(
            "abgate_upstream_errors",
            "Failed upstream exchanges by kind (connect, timeout, closed, protocol, pool_timeout).",
            labels=["upstream", "kind"],
        )
        for (upstream, kind), count in sorted(self.upstream_errors.items()):
            errors.add_metric([upstream, kind], count)
        yield errors
        local = CounterMetricFamily(
            "abgate_local_responses",
            "Responses abgate produced itself instead of an upstream.",
            labels=["status", "reason"],
        )
        for (status, reason), count in sorted(self.local_responses.items()):
            local.add_metric([str(status), reason], count)
        yield local
        fallbacks = CounterMetricFamily(
            "abgate_fallbacks",
            "Requests assigned the treatment arm and answered by the control arm "
            "(counted in the treatment arm: intention to treat), by experiment and reason.",
            labels=["experiment", "reason"],
        )
        for (experiment, reason), count in sorted(self.fallbacks.items()):
            fallbacks.add_metric([experiment, reason], count)
        yield fallbacks
        transitions = CounterMetricFamily(
            "abgate_breaker_transitions",
            "Circuit breaker state changes.",
            labels=["upstream", "from", "to"],
        )
        for (upstream, old, new), count in sorted(self.breaker_transitions.items()):
            transitions.add_metric([upstream, old, new], count)
        yield transitions
        for source in self._gauges:
            yield from source()


def gauge(
    name: str, documentation: str, labels: list[str], samples: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family
