"""Experiments, live statistics and business outcomes.

    GET  /api/experiments                      every experiment: phase, samples, SRM
    GET  /api/experiments/{name}               phases with samples per arm and SRM
    GET  /api/experiments/{name}/significance  every metric of the current phase
    GET  /api/experiments/{name}/timeline      each tick's numbers, for the charts
    GET  /api/metrics/{name}/comparison        each metric's mean per arm, relative change
    POST /api/outcomes                         [{"experiment", "arm", "metric", "value"}]

`current` stands for the experiment whose rollout is under way, else
control.default_experiment, else the only one (control/current.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from abgate.config.fields import shown
from abgate.config.metrics_catalogue import BUILT_IN_METRIC_NAMES
from abgate.config.model import StickySource
from abgate.control.current import require_worker, resolve
from abgate.control.evidence_payloads import EvidenceAnswer, MetricEvidence
from abgate.control.experiment_payloads import (
    ArmNames,
    CombinedAnswer,
    ComparisonAnswer,
    ComparisonRow,
    DeclaredMetric,
    ExperimentAnswer,
    ExperimentsAnswer,
    ExperimentSummary,
    MetricReportAnswer,
    PhaseReportAnswer,
    RouteAnswer,
    SignificanceAnswer,
)
from abgate.control.http import MAX_BODY, WORKER, ApiError, parse_json, too_large
from abgate.control.maturing import mature_at
from abgate.control.outcome_payloads import MAX_OUTCOMES, AcceptedAnswer, OutcomeItem
from abgate.control.payloads import answer, validate
from abgate.control.timeline_payloads import TimelineAnswer
from abgate.proxy.hashing import fnv1a32, user_hash
from abgate.state.errors import StoreUnavailable
from abgate.state.flags import FlagTable
from abgate.state.measurements import (
    CROSS,
    MAX_HELD,
    PRE,
    UNCLUSTERED,
    MaturingFull,
    MeasureKey,
    Sums,
    check_value,
    cluster_of,
)

if TYPE_CHECKING:
    from abgate.control.reports import ExperimentReport
    from abgate.control.stats_worker import StatsWorker
    from abgate.state.history.writer import HistoryWriter
RESTORE_WAIT = 6.0  # seconds a timeline asked for at start waits for PostgreSQL's copy
# An outcome as a client typically writes it, for the batch size that fits the body limit:
# {"experiment": "checkout", "arm": "treatment", "metric": "converted", "value": 1,
#  "user": "u-1234567", "decided_at": 1765000000.123}
OUTCOME_BYTES = 140


async def _report(request: web.Request) -> tuple[StatsWorker, str, ExperimentReport]:
    """The worker's report of the experiment, typed: each handler serialises what it
    sends."""
    worker = require_worker(request)
    name = await resolve(request.app, request.match_info["name"])
    try:
        reports = await worker.evaluate_all()  # fresh numbers for a person asking
    except StoreUnavailable:
        if name not in worker.reports:
            raise  # answered 503 by the control API's error middleware
        reports = worker.reports
    return worker, name, reports[name]


async def list_experiments(request: web.Request) -> web.Response:
    worker = require_worker(request)
    reports = await worker.evaluate_all()
    summaries = [
        ExperimentSummary(
            name=name,
            arms=ArmNames(control=r.control_arm, treatment=r.treatment_arm),
            current_phase=PhaseReportAnswer.model_validate(r.current_phase_json())
            if r.current_phase is not None
            else None,
        )
        for name, r in reports.items()
    ]
    return answer(ExperimentsAnswer(experiments=summaries))


async def get_experiment(request: web.Request) -> web.Response:
    """Phases with samples and SRM; with the routes that lead to it and its declared
    metrics, so that tools (abgate simulate, abgate load-test) know where to send and what
    to report."""
    worker, name, report = await _report(request)
    config = worker.config
    routes = [
        RouteAnswer(
            name=r.name,
            prefix=r.prefix,
            regex=r.regex.pattern if r.regex is not None else None,
            methods=sorted(r.methods) if r.methods is not None else None,
        )
        for r in config.routes
        if r.experiment == name
    ]
    metrics = [
        DeclaredMetric(name=m.name, type=m.type, direction=m.direction, outcome=not m.from_answer)
        for m in config.experiments[name].metrics
    ]
    return answer(
        ExperimentAnswer.model_validate(
            {
                "name": report.name,
                "arms": report.arms_json(),
                "phases": [phase.as_json() for phase in report.phases],
                "current_phase": report.current_phase_json(),
                "evaluated_at": report.evaluated_at,
                "routes": routes,
                "metrics": metrics,
            }
        )
    )


async def significance(request: web.Request) -> web.Response:
    """Every metric of the current phase (fixed and sequential), and at the top the plan's
    primary metric on the comparison of record (control/evidence.py): its always-valid
    p-value, and the power to detect the plan's minimum effect at the samples collected."""
    from abgate.control.evidence_api import evidence_of  # scipy: not in a data-plane process

    _, name, report = await _report(request)
    evidence = await evidence_of(request, name)
    primary = evidence.metrics.get(evidence.primary) if evidence.primary else None
    return answer(
        SignificanceAnswer(
            name=report.name,
            phase=PhaseReportAnswer.model_validate(report.current_phase_json())
            if report.current_phase is not None
            else None,
            metrics={name: MetricReportAnswer.of(r) for name, r in report.metrics.items()},
            across_phases={
                name: CombinedAnswer.model_validate(c) for name, c in report.across_phases.items()
            },
            metric=evidence.primary,
            p_value=primary.p_value if primary else None,
            power=primary.power if primary else None,
            sample_size=primary.sample_size if primary else 0,
            primary=MetricEvidence.of(primary) if primary else None,
            evidence=EvidenceAnswer.of(evidence),
            note=POWER_NOTE,
        )
    )


async def timeline(request: web.Request) -> web.Response:
    """The statistics worker's series for the charts (control/timeline.py): as the ticks
    saw it, not evaluated afresh (a chart polled every few seconds costs no evaluation)."""
    from abgate.control.timeline import series_json

    worker = require_worker(request)
    name = await resolve(request.app, request.match_info["name"])
    if worker.timeline_store is not None and not worker.timelines_restored.is_set():
        with contextlib.suppress(TimeoutError):  # just started: what PostgreSQL kept first
            async with asyncio.timeout(RESTORE_WAIT):
                await worker.timelines_restored.wait()
    experiment = worker.config.experiments[name]
    report = worker.reports.get(name)
    phases = [
        {"id": p.id, "percentage": p.percentage, "started_at": p.started_at}
        for p in (report.phases if report is not None else [])
    ]
    series = series_json(
        name,
        {"control": experiment.control.name, "treatment": experiment.treatment.name},
        worker.timelines.get(name),
        worker.latency_bounds,
        phases,
    )
    return answer(TimelineAnswer.model_validate(series))


POWER_NOTE = (
    "p_value: the primary metric's always-valid p-value on the phases named in evidence; "
    "power: the power a two-sided test at alpha would have, at these samples, to detect the "
    "plan's minimum detectable effect (a design quantity, not the power of the observed "
    "effect)"
)


async def comparison(request: web.Request) -> web.Response:
    """Each metric's mean per arm on the comparison of record, nested by metric and flat as
    `<arm>_<metric>` (`ml_accuracy`, `deterministic_accuracy`)."""
    from abgate.control.evidence_api import evidence_of  # scipy: not in a data-plane process

    require_worker(request)
    name = await resolve(request.app, request.match_info["name"])
    evidence = await evidence_of(request, name)
    control, treatment = evidence.control_arm, evidence.treatment_arm
    rows: dict[str, ComparisonRow] = {}
    flat: dict[str, float | None] = {}
    for metric, result in evidence.metrics.items():
        if result.n_control == 0 and result.n_treatment == 0:
            continue
        a, b = result.mean_control, result.mean_treatment
        # Signed by the metric's direction: positive is better for the treatment.
        rows[metric] = ComparisonRow.model_validate(
            {
                control: a,
                treatment: b,
                "direction": result.direction,
                "relative_change": (b - a) / abs(a) if a and b is not None else None,
                "relative_improvement": result.improvement,
                "n": {control: result.n_control, treatment: result.n_treatment},
            }
        )
        flat[f"{control}_{metric}"] = a
        flat[f"{treatment}_{metric}"] = b
    return answer(
        ComparisonAnswer.model_validate(
            {"name": name, "metrics": rows, **flat, "evidence": EvidenceAnswer.of(evidence)}
        )
    )


async def outcomes(request: web.Request) -> web.Response:
    """A batch of outcomes, all or nothing: a bad item is refused with its index.

    An item's `phase` (the X-ABGate-Phase header of the decision's response) credits the
    phase the decision was made in; without it, the outcome lands in the phase current when
    it is reported. An item's `user` (the sticky key's value) puts the outcome in that
    user's cluster, so a user's outcomes count as one unit with the user's decisions."""
    worker = require_worker(request)
    table = request.app[FLAGS]
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, _split(request.content_length)) from None
    items = parse_json(raw)
    if not isinstance(items, list) or not items:
        raise ApiError(400, "expected a non-empty JSON array of outcomes")
    if len(items) > MAX_OUTCOMES:
        raise ApiError(400, f"at most {MAX_OUTCOMES} outcomes per batch")
    checked = [_item(index, item) for index, item in enumerate(items)]
    history = request.app.get(HISTORY)
    batch: dict[MeasureKey, Sums] = {}
    rows = []
    held: list[tuple[MeasureKey, float, float]] = []  # outcomes of decisions not yet mature
    now = time.time()
    for index, item in enumerate(checked):
        decided_at = None
        if "request_id" in item.model_fields_set:
            item, decided_at = await _by_request_id(history, index, item)
        key, value = _outcome(worker, table, index, item)
        when = _decided_at(worker, index, item, key, decided_at)
        if when is not None and decided_at is None:
            decided_at = datetime.fromtimestamp(when, UTC)
        declared = worker.config.experiments[key[0]].metric(key[3])
        ready = None
        if when is not None and declared is not None:
            ready = mature_at(when, declared.maturity, now)
        for part, measured in _with_covariate(index, item, key, value):
            if ready is None:
                batch.setdefault(part, Sums()).add(measured)
            else:
                held.append((part, measured, ready))
        rows.append((key, value, decided_at, item.request_id))
    if held:  # refused whole, before anything is counted
        waiting = await worker.store.held()
        if waiting + len(held) > MAX_HELD:
            raise ApiError(503, f"{MaturingFull(waiting, MAX_HELD)}: retry later")
    await worker.store.add(batch)
    await worker.store.hold(held)
    if history is not None:
        reported = datetime.now(UTC)
        for (name, phase, arm, metric, _), value, decided_at, request_id in rows:
            history.add(
                "outcomes",
                decided_at or reported,
                request_id,
                name,
                arm,
                phase,
                metric,
                value,
                reported,
            )
    return answer(AcceptedAnswer(accepted=len(items)))


def _split(size: int | None) -> str:
    """A batch over the body limit: into how many to split it."""
    parts = f" into {-(-size // MAX_BODY)} or more" if size else ""
    return (
        f"{too_large()}: split the batch{parts} (at most {MAX_OUTCOMES:,} outcomes a batch; "
        f"some {MAX_BODY // OUTCOME_BYTES:,} fit at {OUTCOME_BYTES} bytes an outcome)"
    )


def _item(index: int, item: Any) -> OutcomeItem:
    if not isinstance(item, dict):
        raise ApiError(400, f"[{index}]: expected an object")
    return validate(OutcomeItem, item, where=f"[{index}]")


async def _by_request_id(
    history: HistoryWriter | None, index: int, item: OutcomeItem
) -> tuple[OutcomeItem, datetime]:
    """An item naming the decision's request id: its experiment, arm and phase come from the
    decision record, so an outcome reported days later lands where the decision did."""
    where = f"[{index}]"
    request_id = item.request_id
    if history is None:
        raise ApiError(
            400,
            f"{where}.request_id: needs the history store (history.postgres_url)"
            "; give experiment, arm and phase instead",
        )
    if request_id is None:
        raise ApiError(400, f"{where}.request_id: expected the X-Request-Id of a decision")
    clashing = sorted({"arm", "phase"} & item.model_fields_set)
    if clashing:
        raise ApiError(400, f"{where}: give request_id or {', '.join(clashing)}, not both")
    try:
        found = await history.decision_of(request_id)
    except Exception as exc:  # the store is down: nothing was accepted
        raise StoreUnavailable(f"history store: {type(exc).__name__}: {exc}") from exc
    if found is None:
        raise ApiError(400, f"{where}.request_id: no decision recorded for {shown(request_id)}")
    experiment, arm, phase, decided_at = found
    if item.experiment not in (None, experiment):
        raise ApiError(
            400,
            f"{where}.experiment: request {shown(request_id)} was a decision of "
            f"{shown(experiment)}",
        )
    resolved = item.model_copy(update={"experiment": experiment, "arm": arm, "phase": phase})
    return resolved, decided_at


def _decided_at(
    worker: StatsWorker,
    index: int,
    item: OutcomeItem,
    key: MeasureKey,
    recorded: datetime | None,
) -> float | None:
    """The decision's time (Unix seconds): the history's record, else the item's
    `decided_at` (within its window: the item checked that); None if neither. A metric
    with a maturity window needs one."""
    if recorded is not None:
        return recorded.timestamp()
    where = f"[{index}].decided_at"
    metric = worker.config.experiments[key[0]].metric(key[3])
    given = item.decided_at
    if given is None:
        if metric is not None and metric.maturity is not None:
            raise ApiError(
                400,
                f"{where}: {key[3]} counts outcomes only once their decision is "
                f"{metric.maturity:g}s old (maturity): give the decision's time (Unix "
                "seconds) or its request_id (with the history store)",
            )
        return None
    return float(given)


def _with_covariate(
    index: int, item: OutcomeItem, key: MeasureKey, value: float
) -> list[tuple[MeasureKey, float]]:
    """The sums an outcome adds: its value, and with a `covariate` (its user's value of the
    metric before the experiment) the covariate's and their product's, for CUPED
    (control/stats/cuped.py)."""
    covariate = item.covariate
    if covariate is None:
        return [(key, value)]
    problem = check_value(covariate) or check_value(covariate * value)
    if problem is not None:
        raise ApiError(400, f"[{index}].covariate: {problem}")
    experiment, phase, arm, metric, cluster = key
    return [
        (key, value),
        ((experiment, phase, arm, metric + PRE, cluster), float(covariate)),
        ((experiment, phase, arm, metric + CROSS, cluster), float(covariate) * value),
    ]


def _outcome(
    worker: StatsWorker, table: FlagTable, index: int, item: OutcomeItem
) -> tuple[MeasureKey, float]:
    where = f"[{index}]"
    name = item.experiment
    if name is None:
        raise ApiError(400, f"{where}.experiment: required (or a request_id to read it from)")
    experiment = worker.config.experiments.get(name)
    if experiment is None:
        raise ApiError(400, f"{where}.experiment: unknown experiment {shown(name)}")
    arms = (experiment.control.name, experiment.treatment.name)
    if item.arm not in arms:
        raise ApiError(
            400,
            f"{where}.arm: expected one of {', '.join(arms)} (the "
            f"X-ABGate-Arm response header), got {shown(item.arm)}",
        )
    metric = item.metric
    definition = experiment.metric(metric)
    if definition is None or metric in BUILT_IN_METRIC_NAMES:  # measured by the proxy itself
        declared = ", ".join(m.name for m in experiment.metrics) or "none"
        raise ApiError(
            400,
            f"{where}.metric: expected a metric declared under "
            f"experiments.{name}.metrics (declared: {declared}), "
            f"got {shown(metric)}",
        )
    if isinstance(item.value, bool) and definition.type != "binary":
        raise ApiError(
            400,
            f"{where}.value: {metric} is continuous: expected a number, got "
            f"{str(item.value).lower()}",
        )
    value = float(item.value)
    problem = check_value(value)
    if problem is not None:  # its square must stay finite: one would poison every sum
        raise ApiError(400, f"{where}.value: {problem}")
    if definition.type == "binary" and value not in (0, 1):
        raise ApiError(
            400,
            f"{where}.value: {metric} is binary: expected 0, 1, true or false, got {shown(value)}",
        )
    flag = table.get(name)
    current = flag.version  # phase ids are the flag versions that began them
    phase = flag.phase if item.phase is None else item.phase
    if not 1 <= phase <= current:
        raise ApiError(
            400, f"{where}.phase: {name} has no phase {phase} (phases are 1 to {current})"
        )
    if experiment.sticky and "user" not in item.model_fields_set:
        raise ApiError(400, _user_required(where, name, experiment.sticky))
    # Without a user (an explicit null: the decision carried no sticky key), the outcome is
    # its own unit (a decision's history row keeps no user, so a request id cannot say).
    cluster = UNCLUSTERED
    if item.user is not None:
        cluster = cluster_of(user_hash(fnv1a32(experiment.seed), item.user))
    return (name, phase, item.arm, definition.name, cluster), value


def _user_required(where: str, name: str, sticky: tuple[StickySource, ...]) -> str:
    """Users are the unit where there is a sticky key: an outcome without its user would be
    counted as an independent unit, and with users' own propensities an A/A test rejected
    34-93% of the time (issue 26)."""
    keys = " or ".join(
        f"the {source.kind} {source.name}" if source.name else source.kind for source in sticky
    )
    return (
        f"{where}.user: required: {name} assigns users by {keys}, and users are the unit of "
        "its statistics; give the sticky key's value the decision carried, or null if the "
        "decision had none (the outcome then counts as its own unit)"
    )


FLAGS = web.AppKey("flag_table", FlagTable)
HISTORY: web.AppKey[HistoryWriter] = web.AppKey("history")


def add_experiment_routes(
    app: web.Application,
    worker: StatsWorker | None,
    table: FlagTable,
    history: HistoryWriter | None = None,
) -> None:
    if worker is not None:
        app[WORKER] = worker
    if history is not None:
        app[HISTORY] = history
    app[FLAGS] = table
    app.router.add_get("/api/experiments", list_experiments)
    app.router.add_get("/api/experiments/{name}", get_experiment)
    app.router.add_get("/api/experiments/{name}/significance", significance)
    app.router.add_get("/api/experiments/{name}/timeline", timeline)
    app.router.add_get("/api/metrics/{name}/comparison", comparison)
    app.router.add_post("/api/outcomes", outcomes)
