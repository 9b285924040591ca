"""The rollout controller's Prometheus families, built at scrape time from what it holds."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import Metric

from abgate.config import metrics_catalogue
from abgate.config.model import RolloutPlan
from abgate.control.rollout.gates import Decision
from abgate.state.rollouts import Rollout

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
    stage = metrics_catalogue.ROLLOUT_STAGE_PERCENTAGE.new()
    state = metrics_catalogue.ROLLOUT_STATE.new()
    eta = metrics_catalogue.ROLLOUT_ETA.new()
    for rollout in rollouts:
        try:
            plan = plan_of(rollout)
        except Exception:  # a plan the config no longer has: no gauges, never a failed scrape
            continue
        stage.add_metric([rollout.experiment], plan.live_bp(rollout.stage_index) / 100)
        for name in states:
            state.add_metric([rollout.experiment, name], float(rollout.state == name))
        if rollout.eta_seconds is not None:
            eta.add_metric([rollout.experiment], rollout.eta_seconds)
    needed = metrics_catalogue.ROLLOUT_SAMPLES_NEEDED.new()
    gates = metrics_catalogue.ROLLOUT_GATE_STATUS.new()
    for name, decision in last_decisions.items():
        if decision is None:
            continue
        for arm, count in decision.needed.items():
            needed.add_metric([name, arm], count)
        for gate in decision.gates:
            gates.add_metric([name, gate.name], _GATE_VALUE.get(gate.status, 0.0))
    yield from (stage, state, eta, needed, gates)
    counted = metrics_catalogue.ROLLOUT_DECISIONS.new()
    for (verdict, kind), count in sorted(decisions.items()):
        counted.add_metric([verdict, kind], count)
    yield counted
    failed = metrics_catalogue.ROLLOUT_ERRORS.new()
    for name, count in sorted(errors.items()):
        failed.add_metric([name], count)
    yield failed
