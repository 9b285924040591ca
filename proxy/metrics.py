"""Request-path measurements as plain in-memory counters, turned into Prometheus families only
when scraped.

prometheus-client's own Counter/Histogram take a lock on every `inc`/`observe` and look labels
up in a dict; here each (experiment, arm, upstream) gets its counters once, at wiring time, and
recording is a list index increment on one event loop, no lock and no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from abgate.config import metrics_catalogue
from abgate.config.metrics_catalogue import OVERHEAD_BUCKETS
from abgate.proxy.outcome import Outcome
from abgate.proxy.traffic import STATUS_CLASSES, TrafficStats
from abgate.state.histogram import Histogram


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
        requests = metrics_catalogue.REQUESTS.new()
        latency = metrics_catalogue.DECISION_LATENCY.new()
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
        overhead = metrics_catalogue.PROXY_OVERHEAD.new()
        overhead.add_metric([], self.overhead.cumulative(), self.overhead.sum)
        yield overhead
        errors = metrics_catalogue.UPSTREAM_ERRORS.new()
        for (upstream, kind), count in sorted(self.upstream_errors.items()):
            errors.add_metric([upstream, kind], count)
        yield errors
        local = metrics_catalogue.LOCAL_RESPONSES.new()
        for (status, reason), count in sorted(self.local_responses.items()):
            local.add_metric([str(status), reason], count)
        yield local
        fallbacks = metrics_catalogue.FALLBACKS.new()
        for (experiment, reason), count in sorted(self.fallbacks.items()):
            fallbacks.add_metric([experiment, reason], count)
        yield fallbacks
        transitions = metrics_catalogue.BREAKER_TRANSITIONS.new()
        for (upstream, old, new), count in sorted(self.breaker_transitions.items()):
            transitions.add_metric([upstream, old, new], count)
        yield transitions
        for source in self._gauges:
            yield from source()


def gauge(
    declared: metrics_catalogue.Gauge, samples: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = declared.new()
    for values, value in samples:
        family.add_metric(values, value)
    return family
