"""The comparison of record (control/evidence.py) from the stores, for the endpoints that
report an experiment's effects: significance, comparison, business impact, the final
assessment and the live significance test."""

from __future__ import annotations

import contextlib

from aiohttp import web

from abgate.config.metrics_catalogue import ERROR_METRIC, LATENCY_METRIC
from abgate.config.model import RolloutPlan
from abgate.control.current import require_worker
from abgate.control.evidence import EvidenceReport, compare, phases_used
from abgate.control.http import CONTROLLER
from abgate.control.measured import by_arm
from abgate.control.rollout.errors import RolloutError
from abgate.state.rollouts import FINISHED


async def _plan_and_span(
    request: web.Request, name: str
) -> tuple[RolloutPlan | None, float | None, float | None]:
    """The plan the experiment is (or was last) rolled out with, when that began, and when
    it ended (None while under way)."""
    controller = request.app.get(CONTROLLER)
    plan = require_worker(request).config.experiments[name].rollout
    if controller is None:
        return plan, None, None
    rollout = await controller.rollouts.get(name)
    if rollout is None:
        return plan, None, None
    with contextlib.suppress(RolloutError):  # its plan was removed: the config's, or none
        plan = controller.plan_of(rollout)
    ended = rollout.updated_at if rollout.state in FINISHED else None
    return plan, rollout.started_at, ended


async def evidence_of(
    request: web.Request, name: str, alpha: float | None = None
) -> EvidenceReport:
    """`alpha`: the intervals' (1 - alpha); default the plan's."""
    worker = require_worker(request)
    experiment = worker.config.experiments[name]
    plan, since, until = await _plan_and_span(request, name)
    phases, sums = await worker.store.read(name)
    arms = by_arm(sums)
    controller = request.app.get(CONTROLLER)
    current = controller.flags.table.get(name).phase if controller is not None else None
    basis, used = phases_used(experiment, phases, arms, since, until, current)
    primary = plan.primary if plan is not None else None
    if alpha is None:
        alpha = plan.alpha if plan is not None else 0.05
    report = EvidenceReport(
        name,
        experiment.control.name,
        experiment.treatment.name,
        basis,
        tuple(used),
        primary=primary.metric if primary is not None else None,
        alpha=alpha,
    )
    names = [LATENCY_METRIC, ERROR_METRIC, *(m.name for m in experiment.metrics)]
    for metric_name in dict.fromkeys(names):
        metric = experiment.metric(metric_name)
        assert metric is not None
        effect = None
        if primary is not None and primary.metric == metric_name:
            effect = primary.minimum_detectable_effect
        report.metrics[metric_name] = compare(
            experiment, metric, used, arms, alpha=alpha, minimum_effect=effect
        )
    return report
