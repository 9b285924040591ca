"""A histogram as plain counts, observed without a lock on one event loop and turned into a
Prometheus family only when scraped (prometheus-client's own takes a lock per `observe`).
Shared by the data plane's counters, the Redis command timings and the history writer."""

from __future__ import annotations

from bisect import bisect_left


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, value: float, times: int) -> None:
        """`times` observations of `value` (a mean over that many events: a pipelined
        statement's rows, a command's calls between two polls)."""
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out
