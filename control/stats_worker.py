"""The statistics worker: every few seconds, each experiment's current phase is compared arm
against arm on every metric, and the results are kept for the API and exported as gauges.

Automated decisions read the sequential result (valid at every look); the fixed-horizon
result is reported next to it. p-values are Holm-adjusted across an experiment's metrics.
Each metric's declared type picks its test: binary (error, 0/1 outcomes) the rates test,
continuous Welch's t. The unit is the user where requests carry a sticky key: each arm's
metric is a ratio over clusters of whole users with its delta-method variance
(control/stats/clusters.py); requests without a user are each their own unit. An arm with
fewer than MIN_CLUSTERS units is "not enough data", not an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric

from abgate.config import Config, metrics_catalogue
from abgate.config.errors import AbgateError
from abgate.config.metrics_catalogue import BUILT_IN_METRIC_NAMES, LATENCY_BUCKETS
from abgate.config.model import BUILT_IN_METRICS, ExperimentConfig, MetricConfig
from abgate.control.measured import EMPTY, ArmKey, PhaseArms, Reads, Users, by_arm, phase_arms
from abgate.control.offload import IN_THREAD, Offload
from abgate.control.reports import ExperimentReport, MetricResult, PhaseReport
from abgate.control.stats import (
    StatsInputError,
    holm,
)
from abgate.control.stats.clusters import (
    MIN_CLUSTERS,
    MIN_SAMPLES,
    ClusteredSums,
    clustered_rates,
    comparable,
)
from abgate.control.stats.cuped import analysed_as_rate
from abgate.control.stats.frequentist import TestResult, rates_test, welch_t
from abgate.control.stats.means import sequential_means
from abgate.control.stats.sequential import sequential_rates
from abgate.control.stats.strata import Combined, stratified_difference
from abgate.control.timeline import RolloutView, Series, event_of, point_of
from abgate.state.errors import StoreUnavailable
from abgate.state.measurements import MeasureKey, MeasurementStore, Phase, Sums

if TYPE_CHECKING:
    from abgate.control.timeline_store import TimelineStore  # asyncpg: only with the history store

log = logging.getLogger("abgate.stats")
INTERVAL = 3.0


def compare(
    a: ClusteredSums, b: ClusteredSums, metric: MetricConfig, alpha: float = 0.05
) -> MetricResult:
    """One metric, control (a) vs treatment (b), with the test its declared type calls for.

    `improvement` is the relative change signed by the metric's direction: positive means
    the treatment is better (lower latency, higher accuracy)."""
    mean_a = a.total / a.count if a.count else None
    mean_b = b.total / b.count if b.count else None
    sign = 1.0 if metric.direction == "higher" else -1.0
    improvement = sign * (mean_b - mean_a) / abs(mean_a) if mean_a and mean_b is not None else None

    def result(
        status: str, fixed: TestResult | None = None, sequential: TestResult | None = None
    ) -> MetricResult:
        return MetricResult(
            metric.type,
            metric.direction,
            a.count,
            b.count,
            mean_a,
            mean_b,
            improvement,
            status,
            fixed,
            sequential,
            significant=sequential is not None and sequential.significant,
            cuped=a.adjusted and b.adjusted,
        )

    if a.count < MIN_SAMPLES or b.count < MIN_SAMPLES:
        return result(
            f"not enough data: control has {a.count}, treatment {b.count} "
            f"samples (need {MIN_SAMPLES} per arm)"
        )
    if a.clusters < MIN_CLUSTERS or b.clusters < MIN_CLUSTERS:
        return result(
            f"not enough data: control's users fall in {a.clusters} clusters, treatment's in "
            f"{b.clusters} (need {MIN_CLUSTERS} per arm to estimate the variance per user)"
        )
    try:
        if analysed_as_rate(metric, a):
            pa, pb, design = clustered_rates(a, b)
            return result(
                "ok",
                rates_test(pa, pb, alpha=alpha, design=design),
                sequential_rates(pa, pb, alpha=alpha, design=design),
            )
        return result(
            "ok",
            welch_t(a.as_mean(), b.as_mean(), alpha=alpha),
            sequential_means(a, b, alpha=alpha),
        )
    except StatsInputError as exc:
        return result(f"not enough data: {exc.message}")
    except ArithmeticError as exc:  # one metric's extreme values never stop the report
        return result(f"cannot compare: {exc} (values too extreme for the tests)")


def _across_phases(
    experiment: ExperimentConfig,
    phases: list[Phase],
    arms: dict[ArmKey, ClusteredSums],
    metrics: list[str],
) -> dict[str, Combined]:
    """Each metric's difference across every phase with data, weighted by precision (never
    pooled: see control/stats/strata.py); only where two or more phases have data."""
    control, treatment = experiment.control.name, experiment.treatment.name
    out: dict[str, Combined] = {}
    for metric in metrics:
        strata = []
        for phase in phases:
            a = arms.get((phase.id, control, metric))
            b = arms.get((phase.id, treatment, metric))
            if a is not None and b is not None and comparable(a, b):
                strata.append((a.as_mean(), b.as_mean()))
        if len(strata) >= 2:
            try:
                out[metric] = stratified_difference(strata)
            except StatsInputError:
                continue
    return out


def evaluate(
    experiment: ExperimentConfig,
    phases: list[Phase],
    sums: Mapping[MeasureKey, Sums],
    users: Users | None = None,
    arms: dict[ArmKey, ClusteredSums] | None = None,
) -> ExperimentReport:
    """One experiment's report; `users` is the store's distinct-users bit counts (none:
    every request counted as its own unit for the SRM), `arms` `by_arm(sums)` when the
    read already made them. Pure: the statistics process runs it (control/offload.py)."""
    name = experiment.name
    arms = by_arm(sums) if arms is None else arms
    control, treatment = experiment.control.name, experiment.treatment.name
    report = ExperimentReport(name, control, treatment, evaluated_at=time.time())
    seen: PhaseArms | None = None
    for phase in phases:
        share = phase.basis_points / 10_000
        seen = phase_arms(arms, sums, users or {}, name, phase.id, (control, treatment), share)
        report.phases.append(PhaseReport.of(phase, seen, control, treatment))
    if seen is None:
        return report
    declared = {*BUILT_IN_METRIC_NAMES, *(m.name for m in experiment.metrics)}
    metrics = sorted(declared & {metric for phase, _, metric in arms if phase == seen.phase})
    for metric in metrics:
        definition = experiment.metric(metric)
        assert definition is not None
        report.metrics[metric] = compare(
            seen.control.get(metric, EMPTY), seen.treatment.get(metric, EMPTY), definition
        )
    report.across_phases = _across_phases(experiment, phases, arms, metrics)
    # Holm within each family: the declared (success) metrics, and the built-in guardrails.
    # `significant` follows the adjusted p-value, so several metrics do not inflate alpha.
    tested = [m for m in metrics if report.metrics[m].sequential is not None]
    for family in (
        [m for m in tested if m not in BUILT_IN_METRICS],
        [m for m in tested if m in BUILT_IN_METRICS],
    ):
        sequential = [report.metrics[m].sequential for m in family]
        adjusted = holm([s.p_value for s in sequential if s is not None])
        for metric, p, test in zip(family, adjusted, sequential, strict=True):
            assert test is not None
            report.metrics[metric] = replace(
                report.metrics[metric], p_value_holm=p, significant=p < 1 - test.confidence_level
            )
    return report


class StatsWorker:
    """Owned background task: evaluates every experiment every `interval` seconds.

    One experiment that cannot be evaluated (a bug, odd data) never stops the others or the
    loop: it is logged once, counted, shown in /health/aggregate, and its last good report
    is kept until it evaluates again."""

    def __init__(
        self,
        config: Config,
        store: MeasurementStore,
        interval: float = INTERVAL,
        reads: Reads | None = None,
        offload: Offload = IN_THREAD,
    ) -> None:
        self.config = config
        self.store = store
        self.reads = reads or Reads(store)  # shared with the rollout controller
        self.offload = offload  # where `evaluate` runs (scipy): the statistics process
        self.interval = interval
        self.reports: dict[str, ExperimentReport] = {}
        self.last_run = 0.0
        self.started_at = time.time()  # a first evaluation is only late a while after this
        self.last_error: str | None = None  # the store could not be read
        self.failing: dict[str, str] = {}  # experiment -> why its last evaluation failed
        self.evaluation_errors: dict[str, int] = {}
        self.waiting = 0  # outcome values waiting for their maturity, at the last tick
        # The charts' data: one bounded series per experiment (control/timeline.py), fed by
        # each tick of `run` (not by the API's own evaluations) and the rollout's events.
        self.timelines: dict[str, Series] = {}
        self.latency_bounds: tuple[float, ...] = LATENCY_BUCKETS
        self.rollout_view: Callable[[str], RolloutView | None] | None = None
        self.latency: Callable[[], Awaitable[dict[str, dict[str, list[int]]]]] | None = None
        self.latency_error: str | None = None
        self.timeline_store: TimelineStore | None = None  # PostgreSQL, with the history store
        self.timelines_restored = asyncio.Event()  # read back (or given up): the API waits

    def series(self, name: str) -> Series:
        series = self.timelines.get(name)
        if series is None:
            series = self.timelines[name] = Series()
        return series

    def rollout_event(self, entry: dict[str, Any]) -> None:
        """A rollout controller's history listener: its decisions, marked on the ramp."""
        name = entry.get("experiment")
        if isinstance(name, str) and name in self.config.experiments:
            self.series(name).events.append(event_of(entry))

    async def record(self, reports: Mapping[str, ExperimentReport]) -> None:
        """One point per experiment on its timeline, with each arm's latency histogram as the
        data plane has it now (none while it cannot be asked: said once)."""
        latency: dict[str, dict[str, list[int]]] = {}
        if self.latency is not None:
            try:
                latency = await self.latency()
            except StoreUnavailable:
                pass  # no data plane connected (yet): /health/aggregate says so
            except Exception as exc:  # the data plane away or slow: the point has no latency
                error = f"{type(exc).__name__}: {exc}"
                if error != self.latency_error:
                    log.warning("statistics worker: latency for the timeline: %s", error)
                self.latency_error = error
            else:
                self.latency_error = None
        for name, report in reports.items():
            experiment = self.config.experiments.get(name)
            if experiment is None:
                continue
            view = self.rollout_view(name) if self.rollout_view is not None else None
            series = self.series(name)
            kept, thinned = series.add(point_of(report, experiment, view, latency.get(name, {})))
            if self.timeline_store is not None:
                self.timeline_store.saved(name, series, kept, thinned)

    async def restore_timelines(self) -> None:
        """The timelines as PostgreSQL kept them, before the first tick adds to them; none
        (logged) when it cannot be read within LOAD_TIMEOUT: the charts start afresh."""
        try:
            await self._restore_timelines()
        finally:
            self.timelines_restored.set()

    async def _restore_timelines(self) -> None:
        if self.timeline_store is None:
            return
        from abgate.control.timeline_store import LOAD_TIMEOUT

        try:
            async with asyncio.timeout(LOAD_TIMEOUT):
                restored = await self.timeline_store.load(sorted(self.config.experiments))
        except Exception as exc:
            log.warning(
                "statistics worker: the timeline could not be read from the history store "
                "(%s: %s); the charts start afresh",
                type(exc).__name__,
                exc,
            )
            return
        for name, series in restored.items():
            events = self.timelines[name].events if name in self.timelines else ()
            series.events.extend(events)  # decisions recorded while it was read
            self.timelines[name] = series

    async def evaluate_all(self) -> dict[str, ExperimentReport]:
        await self.store.mature(time.time())  # outcomes whose decision came of age
        self.waiting = await self.store.held()
        reports = {}
        for name, experiment in self.config.experiments.items():
            read = await self.reads.read(name)  # its own, fresh: the controller shares it
            try:
                reports[name] = await self.offload.run(
                    evaluate, experiment, read.phases, read.sums, read.users, read.arms
                )
            except Exception as exc:
                self._failed(name, exc)
                if name in self.reports:
                    reports[name] = self.reports[name]
            else:
                self.failing.pop(name, None)
        self.reports, self.last_run, self.last_error = reports, time.time(), None
        return reports

    def _failed(self, name: str, exc: Exception) -> None:
        self.evaluation_errors[name] = self.evaluation_errors.get(name, 0) + 1
        message = f"evaluating {name} failed: {type(exc).__name__}: {exc}"
        if self.failing.get(name) != message:  # log once per distinct failure
            trace = None if isinstance(exc, AbgateError) else exc  # a bug: its traceback
            log.error("statistics worker: %s (keeping its last report)", message, exc_info=trace)
        self.failing[name] = message

    async def run(self) -> None:
        await self.restore_timelines()
        while True:
            try:
                await self.record(await self.evaluate_all())
            except StoreUnavailable as exc:
                error = f"measurements unavailable: {exc}"
                if error != self.last_error:
                    log.warning("statistics worker: %s", error)
                self.last_error = error
            except Exception as exc:  # the loop itself must outlive any bug
                error = f"evaluation failed: {type(exc).__name__}: {exc}"
                if error != self.last_error:
                    log.error("statistics worker: %s", error, exc_info=exc)
                self.last_error = error
                self.evaluation_errors["*"] = self.evaluation_errors.get("*", 0) + 1
            await asyncio.sleep(self.interval)

    def collect(self) -> Iterator[Metric]:
        p_value = metrics_catalogue.STATS_P_VALUE.new()
        effect = metrics_catalogue.STATS_EFFECT.new()
        samples = metrics_catalogue.STATS_SAMPLES.new()
        errors = metrics_catalogue.STATS_EVALUATION_ERRORS.new()
        for name, count in self.evaluation_errors.items():
            errors.add_metric([name], count)
        restarts = metrics_catalogue.STATS_PROCESS_RESTARTS.new()
        restarts.add_metric([], self.offload.replaced)
        interval = metrics_catalogue.STATS_INTERVAL.new()
        improvement = metrics_catalogue.STATS_IMPROVEMENT.new()
        srm_p = metrics_catalogue.STATS_SRM_P_VALUE.new()
        for name, report in self.reports.items():
            current = report.current_phase
            if current is not None:
                for arm, count in current.samples.items():
                    samples.add_metric([name, arm], count)
                srm_p.add_metric([name], current.srm.p_value)
            for metric, result in report.metrics.items():
                if result.improvement is not None:  # means alone: before any test can run
                    improvement.add_metric([name, metric, "relative"], result.improvement)
                fixed, sequential = result.fixed, result.sequential
                if fixed is None or sequential is None:
                    continue
                p_value.add_metric([name, metric, "fixed"], fixed.p_value)
                p_value.add_metric([name, metric, "sequential"], sequential.p_value)
                effect.add_metric([name, metric, "absolute"], fixed.effect_absolute)
                if fixed.effect_relative is not None:
                    effect.add_metric([name, metric, "relative"], fixed.effect_relative)
                low, high = sequential.ci_absolute
                if low is not None:
                    interval.add_metric([name, metric, "lower"], low)
                if high is not None:
                    interval.add_metric([name, metric, "upper"], high)
                improvement.add_metric([name, metric, "significant"], float(result.significant))
        waiting = metrics_catalogue.OUTCOMES_WAITING.new()
        waiting.add_metric([], self.waiting)
        yield from (
            p_value,
            effect,
            interval,
            improvement,
            samples,
            srm_p,
            errors,
            restarts,
            waiting,
        )
