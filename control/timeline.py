"""Each experiment's timeline: what the statistics worker saw at each tick, for the charts of
the control page and the reports (`GET /api/experiments/{name}/timeline`).

Memory is bounded whatever the duration: at most CAPACITY points per experiment. When the
series is full, every other point is dropped (pairwise downsampling) and from then on a
point is kept every `stride` ticks, twice as many as before (the ticks whose number is a
multiple of it); the newest tick is always shown beside them. A day or a month of ticks both
end as at most CAPACITY points spread evenly over the whole run. Decisions are events, not
samples: the last EVENTS of them are kept as they came, so a hold's reason is never
downsampled away.

Latency is kept as each arm's cumulative histogram counts (the data plane's
`ab_testing_decision_latency_seconds` buckets); a point's p50 and p95 are those of the
answers between it and the point before, computed when served, so dropping a point widens
its neighbour's window instead of losing its answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from abgate.config.model import ExperimentConfig, RolloutPlan
from abgate.control.reports import ExperimentReport

CAPACITY = 512  # points per experiment
EVENTS = 500  # decision events per experiment
Histograms = Mapping[str, Sequence[int]]  # arm -> counts per bucket (the last is +Inf)


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One metric at one look, signed so that up is better for the treatment."""

    role: str  # primary, guardrail, or other
    effect: float | None  # treatment - control, times -1 for a lower-is-better metric
    low: float | None  # the always-valid (sequential) interval of `effect`
    high: float | None
    line: float | None  # primary: +minimum effect; guardrail: -margin (worse by the margin)
    p_value: float | None  # the sequential p, Holm-adjusted within its family
    status: str

    def as_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "effect": self.effect,
            "low": self.low,
            "high": self.high,
            "line": self.line,
            "p_value": self.p_value,
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class RolloutView:
    """What the rollout controller says of an experiment at a tick."""

    state: str
    stage: int
    decision: str
    kind: str
    reason: str
    eta_seconds: float | None
    needed: Mapping[str, int]
    plan: RolloutPlan | None


@dataclass(frozen=True, slots=True)
class Point:
    t: float
    phase: int | None
    percentage: float | None
    samples: Mapping[str, int]  # "control" / "treatment" -> requests in the current phase
    metrics: Mapping[str, MetricPoint]
    rollout: RolloutView | None
    latency: Histograms  # cumulative, since the data plane started


@dataclass(slots=True)
class Series:
    capacity: int = CAPACITY
    points: list[Point] = field(default_factory=list)
    latest: Point | None = None  # the newest tick, shown until its stride is due
    stride: int = 1
    ticks: int = 0
    kept: list[int] = field(default_factory=list)  # the tick number of each point
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS))

    def add(self, point: Point) -> tuple[bool, bool]:
        """(kept: the point is one of the series' now, thinned: every other one was
        dropped first), for a copy elsewhere (control/timeline_store.py)."""
        self.ticks += 1
        thinned = False
        if self.ticks % self.stride == 0 and len(self.points) >= self.capacity:
            # Full: keep the points on the doubled stride (every other one), so the kept
            # ticks stay evenly spaced from the start of the run to its end.
            self.stride *= 2
            # The run's first point stays: the chart's decisions start from it (a start
            # before the first point shown would not be drawn).
            kept = [i for i, tick in enumerate(self.kept) if tick == 1 or tick % self.stride == 0]
            self.points = [self.points[i] for i in kept]
            self.kept = [self.kept[i] for i in kept]
            thinned = True
        if self.ticks % self.stride and self.ticks != 1:
            self.latest = point
            return False, thinned
        self.points.append(point)
        self.kept.append(self.ticks)
        self.latest = None
        return True, thinned

    def shown(self) -> list[Point]:
        return self.points if self.latest is None else [*self.points, self.latest]


def metric_points(
    report: ExperimentReport, experiment: ExperimentConfig, plan: RolloutPlan | None
) -> dict[str, MetricPoint]:
    """Every metric of the current phase, signed by its direction, with the plan's line."""
    out: dict[str, MetricPoint] = {}
    primary = plan.primary if plan is not None else None
    margins = {g.metric: g.margin for g in plan.guardrails} if plan is not None else {}
    for name, result in report.metrics.items():
        sign = 1.0 if result.direction == "higher" else -1.0
        role = "other"
        line = None
        if primary is not None and primary.metric == name:
            role = "primary"
            if result.mean_a is not None:
                line = abs(primary.minimum_detectable_effect.absolute(result.mean_a))
        elif name in margins:
            role = "guardrail"
            if result.mean_a is not None:
                line = -abs(margins[name].absolute(result.mean_a))
        effect = low = high = None
        test = result.sequential
        if test is not None:
            effect = sign * test.effect_absolute
            ends = [None if b is None else sign * b for b in test.ci_absolute]
            low, high = (ends[0], ends[1]) if sign > 0 else (ends[1], ends[0])
        out[name] = MetricPoint(
            role, effect, low, high, line, result.p_value_holm, result.status.split(":")[0]
        )
    return out


def point_of(
    report: ExperimentReport,
    experiment: ExperimentConfig,
    rollout: RolloutView | None,
    latency: Histograms,
) -> Point:
    current = report.current_phase
    samples = {}
    if current is not None:
        samples = {
            "control": current.samples.get(report.control_arm, 0),
            "treatment": current.samples.get(report.treatment_arm, 0),
        }
    plan = rollout.plan if rollout is not None else experiment.rollout
    return Point(
        report.evaluated_at,
        current.id if current is not None else None,
        current.percentage if current is not None else None,
        samples,
        metric_points(report, experiment, plan),
        rollout,
        latency,
    )


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The q-quantile of histogram counts (the last bucket +Inf), linear within a bucket as
    Prometheus' histogram_quantile; the highest bound for answers beyond it. None: empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running = 0
    for index, count in enumerate(counts):
        if count and running + count >= rank:
            if index >= len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index > 0 else 0.0
            return lower + (bounds[index] - lower) * (rank - running) / count
        running += count
    return bounds[-1]


def _latency_ms(
    bounds: Sequence[float], now: Histograms, before: Histograms | None
) -> dict[str, dict[str, float | int | None]]:
    out: dict[str, dict[str, float | int | None]] = {}
    for arm, counts in now.items():
        previous = (before or {}).get(arm)
        window = list(counts)
        if previous is not None and len(previous) == len(counts):
            window = [max(0, a - b) for a, b in zip(counts, previous, strict=True)]
        p50, p95 = quantile(bounds, window, 0.5), quantile(bounds, window, 0.95)
        out[arm] = {
            "n": sum(window),
            "p50": None if p50 is None else p50 * 1000,
            "p95": None if p95 is None else p95 * 1000,
        }
    return out


def rollout_json(view: RolloutView | None) -> dict[str, Any] | None:
    if view is None:
        return None
    return {
        "state": view.state,
        "stage": view.stage,
        "decision": view.decision,
        "kind": view.kind,
        "reason": view.reason,
        "eta_seconds": view.eta_seconds,
        "needed": dict(view.needed) if view.needed else None,
    }


def series_json(
    name: str,
    arms: Mapping[str, str],
    series: Series | None,
    bounds: Sequence[float],
    phases: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The timeline as the API serves it: latency in ms, shares in %, times in seconds."""
    shown = series.shown() if series is not None else []
    points = []
    before: Histograms | None = None
    for point in shown:
        points.append(
            {
                "t": point.t,
                "phase": point.phase,
                "percentage": point.percentage,
                "samples": dict(point.samples),
                "rollout": rollout_json(point.rollout),
                "metrics": {m: value.as_json() for m, value in point.metrics.items()},
                "latency_ms": _latency_ms(bounds, point.latency, before),
            }
        )
        before = point.latency
    return {
        "name": name,
        "arms": dict(arms),
        "capacity": series.capacity if series is not None else CAPACITY,
        "stride": series.stride if series is not None else 1,
        "ticks": series.ticks if series is not None else 0,
        "phases": [dict(p) for p in phases],
        "points": points,
        "events": list(series.events) if series is not None else [],
    }


EVENT_FIELDS = ("time", "actor", "state", "transition", "change", "stage", "decision", "reason")


def event_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A rollout history entry as the ramp chart marks it (its inputs left out: the gates'
    numbers are in the history; the chart needs what happened and why)."""
    return {key: entry.get(key) for key in EVENT_FIELDS}
