"""The comparison of record: each metric, treatment against control, on the phases that have
both arms. Pure, like the gates: sums in, typed results out.

While a stage runs, that is the current phase (what the gates decide on). Once the rollout
is at 100% (no control arm left) or rolled back to 0% (no treatment), it is the rollout's
earlier phases that had both arms, combined by precision weighting (never pooled: the share
differed between them, control/stats/strata.py). Reading the 100% phase instead compared the
treatment with the one control request that happened to be there ("accuracy -14.45%" for a
model measured +23.5% better), and after a rollback showed nothing at all.

Each result says which phases it used. Its `p_value` is always valid (the confidence
sequence of the combined difference, as the gates use: it holds however often it was looked
at); `p_value_fixed` is the fixed-horizon z-test beside it. `power` is a design quantity:
the power a two-sided test at alpha would have, at these samples' standard error, to detect
the plan's minimum detectable effect; never the "observed power" of the effect measured,
which only restates the p-value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from scipy import special

from abgate.config.metrics_catalogue import ERROR_METRIC
from abgate.config.model import Amount, ExperimentConfig, MetricConfig
from abgate.control.measured import ArmKey
from abgate.control.stats.clusters import MIN_CLUSTERS, ClusteredSums, comparable
from abgate.control.stats.models import StatsInputError
from abgate.control.stats.sequential import TUNING, always_valid_p, half_width
from abgate.control.stats.strata import stratified_difference
from abgate.state.measurements import Phase


@dataclass(frozen=True, slots=True)
class Evidence:
    """One metric on the phases used: treatment (b) against control (a)."""

    metric: str
    type: str
    direction: str
    phases: tuple[int, ...]  # ids of the phases combined
    n_control: int
    n_treatment: int
    mean_control: float | None
    mean_treatment: float | None
    status: str = "ok"  # or "not enough data: ..."
    effect: float | None = None  # treatment - control, in the metric's unit
    ci: tuple[float, float] | None = None  # always valid, at 1 - alpha
    p_value: float | None = None  # always valid
    p_value_fixed: float | None = None
    improvement: float | None = None  # relative change signed by direction: > 0 is better
    improvement_interval: tuple[float, float] | None = None  # the same, for `ci`
    power: float | None = None  # to detect the plan's minimum effect (primary metric only)
    minimum_detectable_effect: float | None = None  # absolute, that power is for
    treatment_interval: tuple[float, float] | None = None  # its mean's, fixed, at 1 - alpha

    @property
    def sample_size(self) -> int:
        return self.n_control + self.n_treatment


@dataclass(frozen=True, slots=True)
class EvidenceReport:
    name: str
    control_arm: str
    treatment_arm: str
    basis: str  # "current phase", "earlier phases with both arms", or "no phase ..."
    phases: tuple[Phase, ...]  # the phases used
    metrics: dict[str, Evidence] = field(default_factory=dict)
    primary: str | None = None  # the plan's primary metric
    alpha: float = 0.05


def phases_used(
    experiment: ExperimentConfig,
    phases: Sequence[Phase],
    arms: Mapping[ArmKey, ClusteredSums],
    since: float | None = None,
    until: float | None = None,
    current: int | None = None,
) -> tuple[str, list[Phase]]:
    """The current phase when it has both arms, else the earlier phases that had: those of
    the rollout (from the phase current at `since`, its start, to `until`, its end when it
    ended; a load test at 50% after a completed rollout is not one of its stages). Judged
    on `error`, which every proxied request has. `current` is the flag's phase: one no
    request was measured in yet is not in the store's list, and is the current one still."""
    if not phases:
        return "no measurements yet", []
    control, treatment = experiment.control.name, experiment.treatment.name

    def both(phase: Phase) -> bool:
        # At 0% or 100% an arm has no share: the few requests it holds were in flight when
        # the percentage changed (38 "control" requests in a 100% phase), not a comparison.
        return 0 < phase.basis_points < 10_000 and comparable(
            arms.get((phase.id, control, ERROR_METRIC)),
            arms.get((phase.id, treatment, ERROR_METRIC)),
        )

    if (current is None or phases[-1].id == current) and both(phases[-1]):
        return "current phase", [phases[-1]]
    start = 0
    if since is not None:
        started = [i for i, p in enumerate(phases) if p.started_at <= since]
        start = started[-1] if started else 0
    earlier = [p for p in phases[start:] if (until is None or p.started_at < until) and both(p)]
    if not earlier:
        return "no phase with both arms yet", []
    return "earlier phases with both arms", earlier


def compare(
    experiment: ExperimentConfig,
    metric: MetricConfig,
    phases: Sequence[Phase],
    arms: Mapping[ArmKey, ClusteredSums],
    *,
    alpha: float = 0.05,
    minimum_effect: Amount | None = None,  # the plan's, for the power (primary metric)
) -> Evidence:
    control, treatment = experiment.control.name, experiment.treatment.name
    pairs = [
        (arms.get((p.id, control, metric.name)), arms.get((p.id, treatment, metric.name)))
        for p in phases
    ]
    a_all = [a for a, _ in pairs if a is not None]
    b_all = [b for _, b in pairs if b is not None]
    n_a, n_b = sum(a.count for a in a_all), sum(b.count for b in b_all)
    mean_a = sum(a.total for a in a_all) / n_a if n_a else None
    mean_b = sum(b.total for b in b_all) / n_b if n_b else None
    base = Evidence(
        metric.name,
        metric.type,
        metric.direction,
        tuple(p.id for p in phases),
        n_a,
        n_b,
        mean_a,
        mean_b,
        treatment_interval=_mean_interval(b_all, alpha),
    )
    strata = [
        (a.as_mean(), b.as_mean())
        for a, b in pairs
        if a is not None and b is not None and comparable(a, b)
    ]
    if not strata:
        both = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not both:
            why = f"no phase has {metric.name} in both arms"
        else:  # in both arms, but too little of it to test: say what is needed
            a, b = max(both, key=lambda pair: min(pair[0].clusters, pair[1].clusters))
            why = (
                f"{metric.name} is in both arms, from too few users to compare: each arm "
                f"needs {MIN_CLUSTERS} (the fullest phase has {a.clusters:,} and {b.clusters:,})"
            )
        return replace(base, status=f"not enough data: {why}")
    try:
        combined = stratified_difference(strata, alpha)
    except StatsInputError as exc:
        return replace(base, status=f"not enough data: {exc.message}")
    lo, hi = combined.ci
    variance = ((hi - lo) / 2 / float(special.ndtri(1 - alpha / 2))) ** 2
    n_total = sum(a.n + b.n for a, b in strata)
    width = half_width(variance, n_total, alpha, TUNING)
    effect = combined.effect
    sign = 1.0 if metric.direction == "higher" else -1.0
    improvement = interval = None
    if mean_a:
        improvement = sign * effect / abs(mean_a)
        ends = sorted(sign * bound / abs(mean_a) for bound in (effect - width, effect + width))
        interval = (ends[0], ends[1])
    power = mde = None
    if minimum_effect is not None and mean_a is not None:
        mde = abs(float(minimum_effect.absolute(mean_a)))
        power = design_power(mde, math.sqrt(variance), alpha)
    return replace(
        base,
        effect=effect,
        ci=(effect - width, effect + width),
        p_value=always_valid_p(effect, variance, n_total, TUNING),
        p_value_fixed=combined.p_value,
        improvement=improvement,
        improvement_interval=interval,
        power=power,
        minimum_detectable_effect=mde,
    )


def _mean_interval(parts: Sequence[ClusteredSums], alpha: float) -> tuple[float, float] | None:
    """One arm's mean over several phases (weighted by samples), with its interval."""
    n = sum(p.count for p in parts)
    if n < 2:
        return None
    mean = sum(p.total for p in parts) / n
    variance = sum((p.count / n) ** 2 * p.variance_of_mean() for p in parts if p.count)
    half = float(special.ndtri(1 - alpha / 2)) * math.sqrt(variance)
    return mean - half, mean + half


def design_power(effect: float, standard_error: float, alpha: float) -> float:
    """The power of a two-sided z-test at alpha to detect `effect` at this standard error."""
    if standard_error <= 0:
        return 1.0
    z = float(special.ndtri(1 - alpha / 2))
    shift = effect / standard_error
    return float(special.ndtr(shift - z) + special.ndtr(-shift - z))
