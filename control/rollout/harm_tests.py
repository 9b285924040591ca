"""The tests behind the gates' rollback and continue: always-valid one-sided p-values on a
stage's sums, valid at every look (control/stats/sequential.py). Harm beyond a guardrail's
margin, or on the primary metric; the treatment over an absolute SLO; a guardrail shown
non-inferior (within its margin). The tests of two arms are the statistics worker's own on
the same sums, so the page and the gate test the same thing; only N* differs (the gate's is
tuned to the stage's planned n, sizing.py).

Pure, as the gates are: the gates (gates.py) put these p-values through Holm and the plan's
alpha and say what they mean for the stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from abgate.config.metrics_catalogue import SLOW_METRIC
from abgate.config.model import ExperimentConfig, MetricConfig, RolloutPlan
from abgate.control.metric_units import amount
from abgate.control.rollout.gate_numbers import Harm, OverLimit
from abgate.control.stats.clusters import (
    MIN_CLUSTERS,
    ClusteredSums,
    clustered_rates,
    comparable,
)
from abgate.control.stats.cuped import analysed_as_rate
from abgate.control.stats.means import means_p
from abgate.control.stats.models import StatsInputError
from abgate.control.stats.sequential import (
    MIN_EVENTS,
    TUNING,
    always_valid_p,
    rates_p,
)


@dataclass(frozen=True, slots=True)
class HarmTest:
    """One harm test of a stage: its gate's name, its p-value, what it observed."""

    name: str
    p_value: float  # always-valid, one-sided: H0 "no harm beyond the margin"
    observed: Harm | OverLimit


def binary_harm_p(
    metric: MetricConfig,
    a: ClusteredSums,
    b: ClusteredSums,
    margin: float,
    *,
    worse: bool,
    tuning: float = TUNING,
) -> float | None:
    """Always-valid one-sided p of a 0/1 metric: with `worse`, of "the treatment is worse by
    more than `margin`" (the rollback's harm test, after the worker's burn-in); otherwise of
    "it is within the margin" (non-inferiority, no event burn-in). Both are the worker's own
    test (`control.stats.sequential.rates_p`: the score variance under the null, here the
    margin, with the same design effects), so the page and the gate test the same thing on
    the same sums; only N* differs (the gate's is the stage's planned n, `tuning`; the
    page's gbstats' default). None: no decision yet (burn-in, or nothing to test)."""
    sign = 1.0 if metric.direction == "lower" else -1.0
    pa, pb, design = clustered_rates(a, b)
    harm = sign * (pb.rate - pa.rate)
    if (harm > margin) != worse or harm == margin:
        return 1.0  # the estimate is on the other side: no evidence for this alternative
    try:
        return rates_p(pa, pb, shift=sign * margin, design=design, burn_in=worse, tuning=tuning)
    except StatsInputError:
        return None


def mean_harm_p(
    metric: MetricConfig,
    a: ClusteredSums,
    b: ClusteredSums,
    margin: float,
    tuning: float = TUNING,
) -> float:
    """Always-valid p of a continuous metric's "the treatment is worse by exactly `margin`":
    the worker's test of means (`control.stats.means.means_p`: the variance under that
    null, per user), which the harm and the non-inferiority tests each read on their side;
    only N* differs (the gate's is the stage's planned n, `tuning`). 1.0 where there is no
    variation to test."""
    sign = 1.0 if metric.direction == "lower" else -1.0
    try:
        return means_p(a, b, shift=sign * margin, tuning=tuning)
    except StatsInputError:
        return 1.0


def harm_tests(
    plan: RolloutPlan,
    experiment: ExperimentConfig,
    control: Mapping[str, ClusteredSums],
    treatment: Mapping[str, ClusteredSums],
    tuned: Mapping[str, float],
) -> list[HarmTest]:
    """Harm beyond each guardrail's margin, and on the primary metric (margin 0), of the
    metrics both arms have comparable sums of."""
    tests = []
    checks: list[tuple[str, Callable[[float], float]]] = [
        (g.metric, g.margin.absolute) for g in plan.guardrails
    ]
    if plan.primary is not None and all(g.metric != plan.primary.metric for g in plan.guardrails):
        checks.append((plan.primary.metric, lambda _mean: 0.0))
    for name, margin_of in checks:
        metric = experiment.metric(name)
        assert metric is not None
        a, b = control.get(name), treatment.get(name)
        if a is None or b is None or not comparable(a, b):
            continue
        margin = margin_of(a.mean)
        tuning = tuned.get(name, TUNING)
        sign = 1.0 if metric.direction == "lower" else -1.0
        harm = sign * (b.mean - a.mean)
        if analysed_as_rate(metric, a):
            found = binary_harm_p(metric, a, b, margin, worse=True, tuning=tuning)
            if found is None:
                continue
            p = found
        else:
            p = mean_harm_p(metric, a, b, margin, tuning) if harm > margin else 1.0
        tests.append(
            HarmTest(
                name,
                p,
                Harm(
                    _harm_detail(metric, a, harm, margin),
                    harm,
                    margin,
                    a.count,
                    b.count,
                ),
            )
        )
    return tests


def non_inferiority_p(
    metric: MetricConfig,
    a: ClusteredSums | None,
    b: ClusteredSums | None,
    margin_of: Callable[[float], float],
    tuning: float = TUNING,
) -> float:
    """Always-valid p of "the treatment is worse by at least the margin"."""
    if a is None or b is None or not comparable(a, b):
        return 1.0
    margin = margin_of(a.mean)
    if analysed_as_rate(metric, a):
        found = binary_harm_p(metric, a, b, margin, worse=False, tuning=tuning)
        return 1.0 if found is None else found
    sign = 1.0 if metric.direction == "lower" else -1.0
    if sign * (b.mean - a.mean) >= margin:
        return 1.0
    return mean_harm_p(metric, a, b, margin, tuning)


def slo_tests(plan: RolloutPlan, treatment: Mapping[str, ClusteredSums]) -> list[HarmTest]:
    """One-sample tests of the treatment arm against the plan's absolute limits."""
    tests = []
    limits = []
    if plan.slo.error_rate is not None:
        limits.append(("slo_error_rate", "error", plan.slo.error_rate, "error rate"))
    if plan.slo.latency_quantile is not None and plan.slo.latency_limit is not None:
        limits.append(
            (
                f"slo_latency_p{plan.slo.latency_quantile * 100:g}",
                SLOW_METRIC,
                1 - plan.slo.latency_quantile,
                f"share slower than {plan.slo.latency_limit * 1000:g} ms",
            )
        )
    for name, metric, limit, what in limits:
        sums = treatment.get(metric)
        if sums is None or sums.clusters < MIN_CLUSTERS or sums.total < MIN_EVENTS:
            continue
        rate = sums.total / sums.count
        adjusted = (sums.total + 1) / (sums.count + 2)
        variance = sums.design_effect(adjusted) * adjusted * (1 - adjusted) / (sums.count + 2)
        excess = rate - limit
        p = always_valid_p(excess, variance, sums.count, TUNING) if excess > 0 else 1.0
        tests.append(
            HarmTest(
                name,
                p,
                OverLimit(
                    f"{what} {rate:.2%} {'over' if rate > limit else 'within'} the limit "
                    f"{limit:.2%}",
                    rate,
                    limit,
                    sums.count,
                ),
            )
        )
    return tests


def _harm_detail(metric: MetricConfig, sums: ClusteredSums, harm: float, margin: float) -> str:
    """The observed difference and what counts as harm, in the metric's unit (latency in ms,
    a rate in points): "treatment worse by 15.3 ms (mean), margin 6.48 ms". A trial read
    "worse by -1" for a better model, and "margin 0" for the primary, harmed by any loss."""
    size = amount(metric.name, metric.type, harm)
    if size.startswith("0 "):  # "worse by 0 pp" for no difference at the unit's precision
        observed = f"no difference in {metric.name} ({size}, {_unit(metric, sums)})"
    else:
        way = "worse" if harm >= 0 else "better"
        observed = f"treatment {way} by {size} ({_unit(metric, sums)})"
    if margin == 0:
        return f"{observed}, harm if worse at all"
    return f"{observed}, margin {amount(metric.name, metric.type, margin)}"


def _unit(metric: MetricConfig, sums: ClusteredSums) -> str:
    if sums.adjusted:
        return "mean, CUPED-adjusted"
    return "rate" if metric.type == "binary" else "mean"
