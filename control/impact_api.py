"""Stability and business impact per experiment, by name (the requirements' paths).

    GET /api/metrics/{name}/stability            incidents, uptime of proxied answers,
                                                 rollbacks, time at the current percentage
    GET /api/metrics/{name}/business-impact      each business metric's improvement,
                                                 interval and significance (direction-aware)
    GET /api/metrics/{name}/long-term-stability  days at 100%, incidents
    GET /api/metrics/{name}/final-assessment     every business metric at the end, with the
                                                 rollout's state

Business metrics are the declared ones (not the built-in latency and error). Numbers are
of the comparison of record (control/evidence.py): the current phase while a stage runs,
the rollout's earlier phases with both arms once it is at 100% or rolled back; each answer
says which (`evidence`). Intervals are always valid, as the gates read them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from abgate.config.metrics_catalogue import ERROR_METRIC, LATENCY_METRIC
from abgate.config.model import BUILT_IN_METRICS
from abgate.control.current import require_worker, resolve
from abgate.control.evidence_payloads import ArmCounts, ArmMeans, EvidenceAnswer
from abgate.control.http import CONTROLLER
from abgate.control.payloads import answer
from abgate.control.report_payloads import (
    BusinessImpactAnswer,
    BusinessRow,
    Detail,
    FinalAssessmentAnswer,
    ImprovementDetail,
    LongTermAnswer,
    ScoreDetail,
    StabilityAnswer,
)
from abgate.state.flags import FlagStore

if TYPE_CHECKING:
    from abgate.control.evidence import EvidenceReport

FLAG_STORE = web.AppKey("impact_flag_store", FlagStore)


async def _name(request: web.Request) -> str:
    require_worker(request)
    return await resolve(request.app, request.match_info["name"])


def _business_rows(evidence: EvidenceReport) -> dict[str, BusinessRow]:
    """Each declared (business) metric on the comparison of record."""
    out: dict[str, BusinessRow] = {}
    for name, result in evidence.metrics.items():
        if name in BUILT_IN_METRICS:
            continue
        out[name] = BusinessRow(
            direction=result.direction,
            improvement_percentage=_percent(result.improvement),
            # relative, in % as the improvement beside it, signed so that > 0 is better,
            # always valid (as the gates read it)
            interval=_percents(result.improvement_interval),
            significant=result.p_value is not None and result.p_value < evidence.alpha,
            p_value=result.p_value,
            n=ArmCounts(control=result.n_control, treatment=result.n_treatment),
            mean=ArmMeans(control=result.mean_control, treatment=result.mean_treatment),
            status=result.status,
        )
    return out


def _percent(value: float | None) -> float | None:
    return None if value is None else value * 100


def _percents(interval: tuple[float, float] | None) -> list[float] | None:
    """A relative interval in %, the unit of the improvement it brackets."""
    return [v * 100 for v in interval] if interval else None


def _headline(evidence: EvidenceReport) -> str | None:
    """The metric a one-number summary speaks of: the plan's primary, else the first
    declared one."""
    if evidence.primary is not None:
        return evidence.primary
    declared = [m for m in evidence.metrics if m not in BUILT_IN_METRICS]
    return declared[0] if declared else None


async def _history(request: web.Request, name: str) -> list[dict[str, Any]]:
    controller = request.app.get(CONTROLLER)
    if controller is None or await controller.rollouts.get(name) is None:
        return []
    return await controller.rollouts.history(name, 10_000)


def _incidents(history: list[dict[str, Any]]) -> int:
    return sum(
        1
        for e in history
        if e.get("change") == "incident opened" or e.get("transition") == "rolled_back"
    )


async def stability(request: web.Request) -> web.Response:
    name = await _name(request)
    worker = require_worker(request)
    history = await _history(request, name)
    _, sums = await worker.store.read(name)
    answered = sum(s.count for key, s in sums.items() if key[3] == ERROR_METRIC)  # every cluster
    failed = sum(s.total for key, s in sums.items() if key[3] == ERROR_METRIC)
    flags = request.app[FLAG_STORE]
    flag = flags.table.get(name)
    changes = await flags.history(name, 1000)
    since = flag.updated_at
    for entry in changes:  # the oldest change that set today's percentage, unbroken
        if entry["percentage"] != flag.percentage:
            break
        since = float(str(entry["updated_at"]))
    return answer(
        StabilityAnswer(
            experiment=name,
            incidents_count=_incidents(history),
            rollbacks=sum(1 for e in history if e.get("transition") == "rolled_back"),
            uptime_percentage=100.0 * (1 - failed / answered) if answered else None,
            answers=answered,
            percentage=flag.percentage,
            seconds_at_current_percentage=time.time() - since,
        )
    )


async def business_impact(request: web.Request) -> web.Response:
    from abgate.control.evidence_api import evidence_of

    name = await _name(request)
    evidence = await evidence_of(request, name)
    headline = _headline(evidence)
    result = evidence.metrics.get(headline) if headline else None
    return answer(
        BusinessImpactAnswer(
            experiment=name,
            metrics=_business_rows(evidence),
            metric=headline,
            improvement_percentage=_percent(result.improvement) if result else None,
            interval=_percents(result.improvement_interval) if result else None,
            p_value=result.p_value if result else None,
            evidence=EvidenceAnswer.of(evidence),
        )
    )


async def long_term_stability(request: web.Request) -> web.Response:
    """Days at 100% since the flag first reached it, summed over every stay there. With
    control.report_time_scale (a rehearsal), each second counts that many; both are shown."""
    name = await _name(request)
    flags = request.app[FLAG_STORE]
    changes = list(reversed(await flags.history(name, 1000)))  # oldest first
    flag = flags.table.get(name)
    if not changes and flag.percentage == 100:  # never changed: at 100% since it was set
        changes = [{"percentage": 100, "updated_at": flag.updated_at}]
    at_full = 0.0
    for entry, following in zip(changes, [*changes[1:], None], strict=True):
        if entry["percentage"] == 100:
            end = float(str(following["updated_at"])) if following else time.time()
            at_full += end - float(str(entry["updated_at"]))
    scale = require_worker(request).config.control.report_time_scale
    return answer(
        LongTermAnswer(
            experiment=name,
            days_at_100_percent=at_full * scale / 86_400,
            seconds_at_100_percent=at_full,
            time_scale=scale,
            incidents_count=_incidents(await _history(request, name)),
        )
    )


async def final_assessment(request: web.Request) -> web.Response:
    """The rollout's end state and every business metric on the comparison of record; flat
    for a dashboard: `<metric>_improvement` (relative, %, > 0 better), `<metric>_score` (the
    treatment's mean) and `time_savings` (latency reduction, %), each with its interval and
    samples under `details`."""
    from abgate.control.evidence_api import evidence_of

    name = await _name(request)
    controller = request.app.get(CONTROLLER)
    rollout = await controller.rollouts.get(name) if controller is not None else None
    evidence = await evidence_of(request, name)
    flat, details = assessment(evidence)
    return answer(
        FinalAssessmentAnswer.model_validate(
            {
                "experiment": name,
                "rollout_state": rollout.state if rollout else None,
                "percentage": request.app[FLAG_STORE].table.get(name).percentage,
                "metrics": _business_rows(evidence),
                **flat,
                "details": details,
                "evidence": EvidenceAnswer.of(evidence),
            }
        )
    )


def assessment(evidence: EvidenceReport) -> tuple[dict[str, float | None], dict[str, Detail]]:
    """The final assessment's flat fields and, for each, its detail."""
    flat: dict[str, float | None] = {}
    details: dict[str, Detail] = {}
    for metric, result in evidence.metrics.items():
        n = ArmCounts(control=result.n_control, treatment=result.n_treatment)
        interval = _percents(result.improvement_interval)
        if metric == LATENCY_METRIC:
            flat["time_savings"] = _percent(result.improvement)
            details["time_savings"] = ImprovementDetail(metric=metric, interval=interval, n=n)
        if metric in BUILT_IN_METRICS:
            continue
        flat[f"{metric}_improvement"] = _percent(result.improvement)
        details[f"{metric}_improvement"] = ImprovementDetail(metric=metric, interval=interval, n=n)
        flat[f"{metric}_score"] = result.mean_treatment
        details[f"{metric}_score"] = ScoreDetail(
            metric=metric,
            arm=evidence.treatment_arm,
            interval=list(result.treatment_interval) if result.treatment_interval else None,
            n=result.n_treatment,
        )
    return flat, details


def add_impact_routes(app: web.Application, store: FlagStore) -> None:
    app[FLAG_STORE] = store
    app.router.add_get("/api/metrics/{name}/stability", stability)
    app.router.add_get("/api/metrics/{name}/business-impact", business_impact)
    app.router.add_get("/api/metrics/{name}/long-term-stability", long_term_stability)
    app.router.add_get("/api/metrics/{name}/final-assessment", final_assessment)
