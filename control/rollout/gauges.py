"""The rollout controller's Prometheus families, built at scrape time from what it holds."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from config.model import RolloutPlan
from control.rollout.gates import Decision
from state.rollouts import Rollout

_GATE_VALUE = {"pass": 1.0, "hold": 0.0, "fail": -1.0}


def rollout_families(
    rollouts: Sequence[Rollout],
    plan_of: Callable[[Rollout], RolloutPlan],
    last_decisions: Mapping[str, Decision | None],
    decisions: Mapping[tuple[str, str], int],
    errors: Mapping[str, int],
    states: Sequence[str],
) -> Iterator[Metric]:
    """Stage, state and ETA of each rollout; samples needed and gate statuses of its last
    decision; decisions and failed ticks counted."""
    stage = GaugeMetricFamily(
        "abgate_rollout_stage_percentage",
        "The percentage of the rollout's current stage.",
        labels=["experiment"],
    )
    state = GaugeMetricFamily(
        "abgate_rollout_state",
        "1 for the rollout's current state.",
        labels=["experiment", "state"],
    )
    eta = GaugeMetricFamily(
        "abgate_rollout_eta_seconds",
        "Seconds until the stage has the samples it needs (absent when unknown).",
        labels=["experiment"],
    )
    for rollout in rollouts:
        try:
            plan = plan_of(rollout)
        except Exception:  # a plan the config no longer has: no gauges, never a failed scrape
            continue
        stage.add_metric([rollout.experiment], plan.stages[rollout.stage_index].percentage_bp / 100)
        for name in states:
            state.add_metric([rollout.experiment, name], float(rollout.state == name))
        if rollout.eta_seconds is not None:
            eta.add_metric([rollout.experiment], rollout.eta_seconds)
    needed = GaugeMetricFamily(
        "abgate_rollout_samples_needed",
        "Samples per arm the current stage needs (sequential design).",
        labels=["experiment", "arm"],
    )
    gates = GaugeMetricFamily(
        "abgate_rollout_gate_status",
        "Each gate of the last decision: 1 pass, 0 hold, -1 fail.",
        labels=["experiment", "gate"],
    )
    for name, decision in last_decisions.items():
        if decision is None:
            continue
        for arm, count in decision.needed.items():
            needed.add_metric([name, arm], count)
        for gate in decision.gates:
            gates.add_metric([name, gate.name], _GATE_VALUE.get(gate.status, 0.0))
    yield from (stage, state, eta, needed, gates)
    counted = CounterMetricFamily(
        "abgate_rollout_decisions",
        "Controller decisions by decision and reason kind.",
        labels=["decision", "reason"],
    )
    for (verdict, kind), count in sorted(decisions.items()):
        counted.add_metric([verdict, kind], count)
    yield counted
    failed = CounterMetricFamily(
        "abgate_rollout_errors",
        "Rollout ticks that failed (kept going).",
        labels=["experiment"],
    )
    for name, count in sorted(errors.items()):
        failed.add_metric([name], count)
    yield failed
