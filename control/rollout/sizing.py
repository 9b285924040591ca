"""How many samples a rollout stage needs: the sizes of the tests the gates actually run
(control/rollout/gates.py), at the stage's split, with the planned power. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from abgate.config.model import Amount, ExperimentConfig, MetricConfig, RolloutPlan
from abgate.control.measured import EMPTY
from abgate.control.stats.clusters import ClusteredSums
from abgate.control.stats.cuped import analysed_as_rate
from abgate.control.stats.sequential import TUNING
from abgate.control.stats.tuning import SizedTest, tuned_size

MIN_VARIANCE_SAMPLES = 10  # control samples before its variance is trusted for sizing


@dataclass(frozen=True, slots=True)
class Sized:
    """A target metric's size: samples per arm for the effect it is sized for, the N*
    its tests are tuned to (control/stats/tuning.py), and the test that sets it
    ("non_inferiority" or "harm")."""

    metric: str
    effect: float
    control: int
    treatment: int
    tuning: float
    binding: str = "non_inferiority"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TooFewToSize:
    """A target metric whose control arm has too few samples to estimate its variance."""

    metric: str
    control: int
    at_least: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


Sizing = Sized | TooFewToSize


def tested_stages(plan: RolloutPlan) -> int:
    """The stages that run rollback tests: each one with a control arm (the holdout
    included), and a 100% stage without a holdout when the plan sets SLOs (its only tests)."""
    compared = sum(
        1
        for index, stage in enumerate(plan.stages)
        if stage.percentage_bp < 10_000 or plan.holds_out(index)
    )
    last_tests_slos = plan.holdout is None and (
        plan.slo.error_rate is not None
        or (plan.slo.latency_quantile is not None and plan.slo.latency_limit is not None)
    )
    return compared + last_tests_slos


def stage_alpha(plan: RolloutPlan) -> float:
    """The rollback tests' alpha in one stage: the plan's alpha split evenly over the
    stages that test (Bonferroni across the whole ramp, 100% included), so a rollout spends
    its alpha once."""
    return plan.alpha / max(1, tested_stages(plan))


def _variance(metric: MetricConfig, sums: ClusteredSums) -> float:
    """The variance per request, inflated by the clustering of users (the design effect):
    sample sizes stay in requests, the unit the arrival rate is counted in."""
    if analysed_as_rate(metric, sums):
        rate = (sums.total + 1) / (sums.count + 2)  # never 0: sizing needs a spread
        return rate * (1 - rate) * sums.design_effect(rate)
    return sums.as_mean().variance


def harm_alpha(plan: RolloutPlan) -> float:
    """The alpha one harm test of a compared stage spends at worst: the stage's alpha over
    its Holm family (every guardrail, the primary unless it is one, every SLO), as
    Bonferroni, Holm's first step. Stages are sized for it, not for the plan's alpha."""
    tests = len(plan.guardrails)
    if plan.primary is not None and all(g.metric != plan.primary.metric for g in plan.guardrails):
        tests += 1
    tests += plan.slo.error_rate is not None
    tests += plan.slo.latency_quantile is not None and plan.slo.latency_limit is not None
    return stage_alpha(plan) / max(1, tests)


def _variance_at(
    metric: MetricConfig, control: ClusteredSums, treatment: ClusteredSums, harm: float
) -> tuple[float, float]:
    """(control's variance, the treatment's) per sample when the treatment is worse by
    `harm`: a rate's variance at the treatment's own rate (p(1-p) shrinks towards 0 and 1),
    with the control's design effect; a mean's from the treatment's samples once it has
    enough, never below the control's."""
    variance_a = _variance(metric, control)
    if analysed_as_rate(metric, control):
        rate = (control.total + 1) / (control.count + 2)
        design = control.design_effect(rate)
        sign = 1.0 if metric.direction == "lower" else -1.0
        worse = min(1 - 1e-9, max(1e-9, rate + sign * harm))
        return variance_a, worse * (1 - worse) * design
    if treatment.count >= MIN_VARIANCE_SAMPLES:
        return variance_a, max(variance_a, treatment.as_mean().variance)
    return variance_a, variance_a


def samples_needed(
    plan: RolloutPlan,
    experiment: ExperimentConfig,
    control_sums: Mapping[str, ClusteredSums],
    treatment_sums: Mapping[str, ClusteredSums],
    share: float,
) -> tuple[dict[str, dict[str, int]] | None, list[Sizing]]:
    """Samples per arm of each target metric (in its own unit: a posted outcome is a
    sample of its metric, a request without one is not) for the tests the gate runs, at
    the live split, with the planned power:

    - the primary: its harm test (at `harm_alpha`) catches a loss of the minimum detectable
      effect, and its non-inferiority test (at the plan's alpha) shows an equal treatment
      within its margin (`margin`, by default three quarters of the minimum detectable
      effect);
    - each guardrail: its non-inferiority test shows an equal treatment within the margin,
      and its harm test (at `harm_alpha`) catches a treatment worse by twice the margin
      (the margin beyond the margin).

    Variances are each arm's at the effect sized for (`_variance_at`). None while a target
    has too few control samples to size it (the last entry of the sizing says which); a
    primary declared `allow_unmeasured` is no target."""
    rollback_alpha = harm_alpha(plan)
    # (metric, non-inferiority margin, excess the harm test must catch, the treatment's harm
    # then in multiples of that excess)
    targets: list[tuple[str, Amount, Amount, float]] = []
    if plan.primary is not None and not plan.primary.allow_unmeasured:
        primary = plan.primary
        targets.append(
            (primary.metric, primary.non_inferiority_margin, primary.minimum_detectable_effect, 1.0)
        )
    targets += [(g.metric, g.margin, g.margin, 2.0) for g in plan.guardrails]
    needs: dict[str, dict[str, int]] = {}
    sizing: list[Sizing] = []
    for name, amount, harm_amount, caught_at in targets:
        metric = experiment.metric(name)
        assert metric is not None
        control = control_sums.get(name, EMPTY)
        treatment = treatment_sums.get(name, EMPTY)
        if control.count < MIN_VARIANCE_SAMPLES:  # the last entry says which metric lacks
            sizing.append(TooFewToSize(name, control.count, MIN_VARIANCE_SAMPLES))
            return None, sizing
        effect = amount.absolute(control.total / control.count)
        excess = harm_amount.absolute(control.total / control.count)
        need = {"control": 2, "treatment": 2}
        tuning = TUNING
        if effect > 0 and _variance(metric, control) > 0:  # else constant: shows at once
            tests = (
                # non-inferiority of an equal treatment, read once the samples are there:
                # its spread where the arms are equal, its width at the margin (the null)
                SizedTest(
                    effect,
                    _variance_at(metric, control, treatment, 0.0),
                    plan.alpha,
                    _variance_at(metric, control, treatment, effect),
                ),
                # the rollback of a treatment worse by `caught_at` times the excess, at the
                # first look that crosses: its spread there, its width at the null (the
                # margin a guardrail may lose; no loss for the primary)
                SizedTest(
                    excess,
                    _variance_at(metric, control, treatment, caught_at * excess),
                    rollback_alpha,
                    _variance_at(metric, control, treatment, (caught_at - 1) * excess),
                    anytime=True,
                ),
            )
            need, tuning, which = tuned_size(tests, share, plan.power)
            sizing.append(
                Sized(
                    name,
                    effect,
                    need["control"],
                    need["treatment"],
                    tuning,
                    "harm" if which == 1 else "non_inferiority",
                )
            )
        previous = needs.get(name, {"control": 0, "treatment": 0})
        needs[name] = {arm: max(previous[arm], need[arm]) for arm in need}
    return needs, sizing


def tunings(sizing: list[Sizing]) -> dict[str, float]:
    """Each sized metric's N* (the gates' tests of it use it), from `samples_needed`: of
    its largest size where it is sized twice (the primary and a guardrail)."""
    out: dict[str, tuple[int, float]] = {}
    for entry in sizing:
        if isinstance(entry, Sized):
            size = entry.control + entry.treatment
            if size >= out.get(entry.metric, (0, 0.0))[0]:
                out[entry.metric] = (size, entry.tuning)
    return {metric: tuning for metric, (_, tuning) in out.items()}
