"""The statistics worker: every few seconds, each experiment's current phase is compared arm
against arm on every metric, and the results are kept for the API and exported as gauges.

Automated decisions read the sequential result (valid at every look); the fixed-horizon
result is reported next to it. p-values are Holm-adjusted across an experiment's metrics.
Binary metrics (error, and 0/1 outcomes) use the rates test; others Welch's t.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from config import Config
from config.flags import FlagStoreUnavailable
from config.measurements import MeasurementStore, Phase, Sums
from control.stats import (
    Proportion,
    SampleMean,
    StatsInputError,
    holm,
    mean_power,
    proportion_power,
    sequential_test,
    srm,
)
from control.stats.checks import SRM_THRESHOLD
from control.stats.frequentist import rates_test, welch_t

log = logging.getLogger("abgate.stats")
INTERVAL = 3.0


def is_binary(sums: Sums) -> bool:
    """0/1 values: x² = x, so the sum of squares equals the sum."""
    return sums.count > 0 and abs(sums.total_sq - sums.total) < 1e-9 * max(1.0, sums.total) \
        and sums.total <= sums.count


def compare(a: Sums, b: Sums, alpha: float = 0.05) -> dict[str, Any]:
    """One metric, control (a) vs treatment (b)."""
    out: dict[str, Any] = {"n": {"a": a.count, "b": b.count},
                           "mean": {"a": a.total / a.count if a.count else None,
                                    "b": b.total / b.count if b.count else None}}
    try:
        if is_binary(a) and is_binary(b):
            pa = Proportion(a.count, round(a.total))
            pb = Proportion(b.count, round(b.total))
            fixed = rates_test(pa, pb, alpha=alpha)
            sequential = sequential_test(pa.as_mean(), pb.as_mean(), alpha=alpha)
            out["type"] = "binary"
            out["power"] = proportion_power(pa.rate, pb.rate - pa.rate, min(pa.n, pb.n),
                                            alpha) if 0 < pa.rate < 1 and 0 < pb.rate < 1 \
                and pa.rate != pb.rate else None
        else:
            ma, mb = SampleMean.from_sums(a.count, a.total, a.total_sq), \
                SampleMean.from_sums(b.count, b.total, b.total_sq)
            if ma.n < 2 or mb.n < 2:
                raise StatsInputError("n", "fewer than 2 samples in an arm")
            fixed = welch_t(ma, mb, alpha=alpha)
            sequential = sequential_test(ma, mb, alpha=alpha)
            out["type"] = "mean"
            pooled = math.sqrt((ma.variance + mb.variance) / 2)
            out["power"] = mean_power(abs(mb.mean - ma.mean) / pooled, min(ma.n, mb.n),
                                      alpha) if pooled > 0 else None
    except StatsInputError as exc:
        out["status"] = f"not enough data: {exc.message}"
        return out
    out["status"] = "ok"
    out["fixed"] = fixed.as_json()
    out["sequential"] = sequential.as_json()
    return out


@dataclass
class ExperimentReport:
    name: str
    control_arm: str
    treatment_arm: str
    phases: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluated_at: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "arms": {"control": self.control_arm,
                                            "treatment": self.treatment_arm},
                "phases": self.phases, "current_phase": self.phases[-1] if self.phases else None,
                "metrics": self.metrics, "evaluated_at": self.evaluated_at}


def evaluate(config: Config, name: str, phases: list[Phase],
             sums: dict[tuple[str, int, str, str], Sums]) -> ExperimentReport:
    experiment = config.experiments[name]
    control, treatment = experiment.control.name, experiment.treatment.name
    report = ExperimentReport(name, control, treatment, evaluated_at=time.time())
    for phase in phases:
        counts = [sums.get((name, phase.id, arm, "error"), Sums()).count
                  for arm in (control, treatment)]
        weight = phase.basis_points / 10_000
        srm_p = srm(counts, [1 - weight, weight]) if 0 < weight < 1 else None
        report.phases.append({"id": phase.id, "percentage": phase.basis_points / 100,
                              "started_at": phase.started_at,
                              "samples": {control: counts[0], treatment: counts[1]},
                              "srm_p_value": srm_p,
                              "srm_flagged": srm_p is not None and srm_p < SRM_THRESHOLD})
    if not phases:
        return report
    current = phases[-1].id
    metrics = sorted({key[3] for key in sums if key[1] == current})
    for metric in metrics:
        report.metrics[metric] = compare(sums.get((name, current, control, metric), Sums()),
                                         sums.get((name, current, treatment, metric), Sums()))
    tested = [m for m in metrics if report.metrics[m]["status"] == "ok"]
    adjusted = holm([report.metrics[m]["sequential"]["p_value"] for m in tested])
    for metric, p in zip(tested, adjusted, strict=True):
        report.metrics[metric]["sequential"]["p_value_holm"] = p
    return report


class StatsWorker:
    """Owned background task: evaluates every experiment every `interval` seconds."""

    def __init__(self, config: Config, store: MeasurementStore,
                 interval: float = INTERVAL) -> None:
        self.config = config
        self.store = store
        self.interval = interval
        self.reports: dict[str, ExperimentReport] = {}
        self.last_run = 0.0
        self.last_error: str | None = None

    async def evaluate_all(self) -> dict[str, ExperimentReport]:
        reports = {}
        for name in self.config.experiments:
            phases, sums = await self.store.read(name)
            reports[name] = evaluate(self.config, name, phases, sums)
        self.reports, self.last_run, self.last_error = reports, time.time(), None
        return reports

    async def run(self) -> None:
        while True:
            try:
                await self.evaluate_all()
            except FlagStoreUnavailable as exc:
                self.last_error = f"measurements unavailable: {exc}"
                log.warning("statistics worker: %s", self.last_error)
            await asyncio.sleep(self.interval)

    def collect(self) -> Iterator[Metric]:
        p_value = GaugeMetricFamily("abgate_stats_p_value", "Latest p-value per metric.",
                                    labels=["experiment", "metric", "test"])
        effect = GaugeMetricFamily("abgate_stats_effect",
                                   "Treatment minus control, current phase.",
                                   labels=["experiment", "metric", "kind"])
        samples = GaugeMetricFamily("abgate_stats_samples", "Requests per arm, current phase.",
                                    labels=["experiment", "arm"])
        power = GaugeMetricFamily("abgate_stats_power",
                                  "Achieved power for the observed effect, current phase.",
                                  labels=["experiment", "metric"])
        srm_p = GaugeMetricFamily("abgate_stats_srm_p_value",
                                  "Sample-ratio-mismatch p-value, current phase.",
                                  labels=["experiment"])
        for name, report in self.reports.items():
            if report.phases:
                current = report.phases[-1]
                for arm, count in current["samples"].items():
                    samples.add_metric([name, arm], count)
                if current["srm_p_value"] is not None:
                    srm_p.add_metric([name], current["srm_p_value"])
            for metric, result in report.metrics.items():
                if result["status"] != "ok":
                    continue
                for test in ("fixed", "sequential"):
                    p_value.add_metric([name, metric, test], result[test]["p_value"])
                effect.add_metric([name, metric, "absolute"],
                                  result["fixed"]["effect"]["absolute"])
                if result.get("power") is not None:
                    power.add_metric([name, metric], result["power"])
                if result["fixed"]["effect"]["relative"] is not None:
                    effect.add_metric([name, metric, "relative"],
                                      result["fixed"]["effect"]["relative"])
        yield from (p_value, effect, samples, srm_p, power)
