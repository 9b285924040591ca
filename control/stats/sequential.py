"""Sequential testing: asymptotic confidence sequences (Waudby-Smith et al. 2023), as in
GrowthBook's gbstats. They hold at every look at once, so an automated gate may check every
tick without inflating the false-positive rate above alpha. The always-valid p-value is the
smallest alpha whose sequence excludes zero."""

from __future__ import annotations

import math
from collections.abc import Callable

from scipy import optimize, special

from abgate.control.stats.crossing import crossing_z
from abgate.control.stats.frequentist import TestResult, relative_effect
from abgate.control.stats.models import Proportion, SampleMean, StatsInputError
from abgate.control.summary_bounds import MAX_N

TUNING = 5000.0  # gbstats' N*: the sample size around which the sequence is tightest


def _rho(alpha: float, tuning: float) -> float:
    return math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning)


def half_width(variance: float, n_total: int, alpha: float, tuning: float = TUNING) -> float:
    """Half-width of the sequence for an estimate whose variance is `variance` at `n_total`
    observations in all."""
    rho = _rho(alpha, tuning)
    s2 = variance * n_total
    return math.sqrt(s2) * math.sqrt(
        (2 * (n_total * rho**2 + 1))
        / (n_total**2 * rho**2)
        * math.log(math.sqrt(n_total * rho**2 + 1) / alpha)
    )


def always_valid_p(diff: float, variance: float, n_total: int, tuning: float) -> float:
    """The smallest alpha whose sequence around `diff` excludes 0."""

    def excludes_zero_margin(log_alpha: float) -> float:
        return abs(diff) - half_width(variance, n_total, math.exp(log_alpha), tuning)

    if excludes_zero_margin(math.log(1 - 1e-12)) <= 0:
        return 1.0  # even the narrowest sequence (alpha -> 1) still holds 0
    if excludes_zero_margin(math.log(1e-300)) > 0:
        return 1e-300
    return min(
        1.0,
        math.exp(
            optimize.brentq(excludes_zero_margin, math.log(1e-300), math.log(1 - 1e-12), xtol=1e-12)
        ),
    )


def invert(
    estimate: float,
    variance_at: Callable[[float], float],
    n_total: int,
    alpha: float,
    tuning: float = TUNING,
    limit: float | None = None,
) -> tuple[float | None, float | None]:
    """The interval of the shifts a test does not reject at `alpha`: the test of "the
    difference is `shift`" whose variance at that null is `variance_at(shift)`. So the
    interval excludes 0 exactly when the test of no difference rejects (issue 26 item 10:
    an interval with a variance of its own disagreed with its test in 1.6% of rate cases).
    Each end is the first shift, going out from the estimate, the sequence excludes; past
    `limit` (a rate difference cannot pass 1) the end is `limit`, and with no limit an end
    the data cannot bound is None."""

    def outside(distance: float, side: float) -> float:
        """> 0 where the sequence excludes the shift `distance` from the estimate."""
        shift = estimate + side * distance
        return distance - half_width(variance_at(shift), n_total, alpha, tuning)

    step = max(half_width(variance_at(estimate), n_total, alpha, tuning), 1e-12)
    ends: list[float | None] = []
    for side in (-1.0, 1.0):
        reach = math.inf if limit is None else max(0.0, limit - side * estimate)
        end: float | None = None
        near = 0.0
        for doubling in range(64):
            far = min(step * 2.0**doubling, reach)
            if outside(far, side) > 0:
                found = optimize.brentq(outside, near, far, args=(side,), xtol=1e-12 * step)
                end = estimate + side * found
                break
            if far >= reach:
                end = side * reach + estimate if limit is not None else None
                break
            near = far
        ends.append(end)
    return ends[0], ends[1]


def sequential_test(
    a: SampleMean, b: SampleMean, *, alpha: float = 0.05, tuning: float = TUNING
) -> TestResult:
    """Difference of means with an always-valid interval and p-value (two-sided)."""
    variance = a.variance / a.n + b.variance / b.n
    if variance == 0:
        raise StatsInputError("a.std", "both arms have zero variance: nothing to test")
    n_total = a.n + b.n
    diff = b.mean - a.mean
    width = half_width(variance, n_total, alpha, tuning)
    p = always_valid_p(diff, variance, n_total, tuning)
    lift, ci_rel = relative_effect(a, b, width / math.sqrt(variance))
    return TestResult(
        "sequential",
        p,
        1 - alpha,
        p < alpha,
        diff,
        lift,
        (diff - width, diff + width),
        ci_rel,
        a.n,
        b.n,
    )


MIN_EVENTS = 10  # of the rarer outcome, both arms together, before any sequential decision


def rates_burn_in(a: Proportion, b: Proportion) -> str | None:
    """Why the rates test may not decide yet, or None: MIN_EVENTS of the rarer outcome in
    all, and at least one expected in the smaller arm (the normal approximation needs
    counts). Without it, the first event in the big arm of a 1% split was "significant"."""
    n_total = a.n + b.n
    pooled = (a.successes + b.successes) / n_total
    rare = min(pooled, 1 - pooled)
    events = rare * n_total
    if events < MIN_EVENTS or min(a.n, b.n) * rare < 1:
        return (
            f"burn-in: {events:.0f} of {MIN_EVENTS} events, "
            f"{min(a.n, b.n) * rare:.2f} of 1 expected in the smaller arm"
        )
    return None


def null_rates(a: Proportion, b: Proportion, shift: float = 0.0) -> tuple[float, float]:
    """Both arms' rates estimated under the null "b's rate - a's rate = shift": the pooled
    rate when `shift` is 0; otherwise the pooled estimate moved apart by `shift` (the
    precision-weighted solution of the constraint, clipped to [0, 1]; close to Farrington
    and Manning's restricted MLE, which needs a cubic)."""
    n_total = a.n + b.n
    rate_a = (a.successes + b.successes - b.n * shift) / n_total
    rate_a = min(min(1.0, 1.0 - shift), max(max(0.0, -shift), rate_a))
    return rate_a, rate_a + shift


def rates_null_variance(
    a: Proportion, b: Proportion, shift: float = 0.0, design: tuple[float, float] = (1.0, 1.0)
) -> float:
    """The variance of b's rate minus a's under the null (the score test's): each arm's
    variance at its null rate, never at its own observed rate, which is 0 for an arm with no
    event yet and made a 0-of-100 treatment arm "significantly worse" than 95 of 1,900."""
    rate_a, rate_b = null_rates(a, b, shift)
    design_a, design_b = design
    return design_a * rate_a * (1 - rate_a) / a.n + design_b * rate_b * (1 - rate_b) / b.n


def rates_p(
    a: Proportion,
    b: Proportion,
    *,
    shift: float = 0.0,
    design: tuple[float, float] = (1.0, 1.0),
    tuning: float = TUNING,
    burn_in: bool = True,
) -> float:
    """Always-valid p-value of "b's rate - a's rate = shift" against a difference beyond it
    (the sequence is two-sided; a one-sided caller reads p only when the difference lies on
    its side). The one implementation of the sequential rates test: the worker's report and
    the rollout gates' harm and non-inferiority tests all call it. `burn_in` False (showing
    no harm beyond a margin, where a healthy service may have no errors at all) skips the
    event burn-in; the null variance at the margin stays positive. Raises StatsInputError
    during the burn-in."""
    if burn_in:
        waiting = rates_burn_in(a, b)
        if waiting is not None:
            raise StatsInputError("n", waiting)
    variance = rates_null_variance(a, b, shift, design)
    if not variance > 0:
        raise StatsInputError("successes", "no variation under the null: nothing to test")
    return always_valid_p(b.rate - a.rate - shift, variance, a.n + b.n, tuning)


def sequential_rates(
    a: Proportion,
    b: Proportion,
    *,
    alpha: float = 0.05,
    tuning: float = TUNING,
    design: tuple[float, float] = (1.0, 1.0),
) -> TestResult:
    """Difference of rates with an always-valid p-value that holds at small splits.

    The plug-in variance of each arm fails for rates: an arm with no event yet has variance
    0, the sequence shrinks to a point, and an A/A test at a 5% split rejects a third of the
    time (benchmarks/RESULTS.md). So the test (`rates_p`) uses the pooled variance under the
    null, and waits for a burn-in (`rates_burn_in`). The interval is the test inverted: the
    shifts whose score test does not reject (`invert`), so it excludes 0 exactly when the
    test is significant; an interval with each arm's own (Agresti-Caffo) variance, centred
    on the raw difference, disagreed with the test in 0.85% of random cases, 13% with
    unequal design effects (benchmarks/RESULTS.md). `design` is each arm's
    design effect (control/stats/clusters.py): how much its users' clustering inflates the
    variance of its rate; 1 for independent units."""
    p = rates_p(a, b, design=design, tuning=tuning)
    low, high = invert(
        b.rate - a.rate,
        lambda shift: rates_null_variance(a, b, shift, design),
        a.n + b.n,
        alpha,
        tuning,
        1.0,
    )
    design_a, design_b = design
    return inverted_result(
        p,
        (a.as_mean(design_a), b.as_mean(design_b)),
        (low, high),
        rates_null_variance(a, b, 0.0, design),
        alpha,
        tuning,
    )


def inverted_result(
    p: float,
    arms: tuple[SampleMean, SampleMean],
    interval: tuple[float | None, float | None],
    variance: float,
    alpha: float,
    tuning: float,
) -> TestResult:
    """A sequential test's result with the interval that inverts it; the relative interval
    by the delta method on the ratio, at the test's multiplier at no difference."""
    a, b = arms
    n_total = a.n + b.n
    z = half_width(variance, n_total, alpha, tuning) / math.sqrt(variance)
    lift, ci_relative = relative_effect(a, b, z)
    diff = b.mean - a.mean
    return TestResult(
        "sequential", p, 1 - alpha, p < alpha, diff, lift, interval, ci_relative, a.n, b.n
    )


def sequential_sample_size(
    effect: float,
    variance_a: float,
    variance_b: float,
    *,
    share: float = 0.5,
    power: float = 0.8,
    alpha: float = 0.05,
    tuning: float = TUNING,
    null_variances: tuple[float, float] | None = None,
    anytime: bool = False,
) -> tuple[int, int]:
    """Samples (control, treatment) for the sequential test, as the worker runs it, to detect
    `effect` (an absolute difference) with `power`: the n where the sequence's half-width
    leaves room for the estimate to clear it with that probability. `variance_a` and
    `variance_b` are each arm's variance per sample where the truth is (the estimate's
    spread); `null_variances` where the null is (the sequence's width, as the test takes it
    under the null: rates' score variance), by default the same. Sized on the last look by
    default (a test read once its samples are there), where the earlier looks only add
    power: a fixed-horizon size under-powers this test by about 1.7-1.9x. With `anytime`
    (a test acted on at the first look that crosses) the n whose chance of crossing by then
    is `power` (control/stats/crossing.py)."""
    if effect == 0 or not math.isfinite(effect):
        raise StatsInputError("effect", "must be a finite number other than 0")
    if not 0 < share < 1:
        raise StatsInputError("share", f"the treatment share must be in (0, 1), got {share}")
    null_a, null_b = null_variances or (variance_a, variance_b)
    if min(variance_a, variance_b, null_a, null_b) <= 0:
        raise StatsInputError("variance", "both arms need a positive variance")
    z_power = -float(special.ndtri(1 - power))
    delta = abs(effect)
    spread = variance_a / (1 - share) + variance_b / share  # per sample of both arms
    width = null_a / (1 - share) + null_b / share

    def shortfall(log_n: float, crossing: bool) -> float:
        n = math.exp(log_n)
        z = z_power
        if crossing:
            m = n * _rho(alpha, tuning) ** 2
            z = crossing_z(alpha, power, m, math.sqrt(width / spread))
        return delta - half_width(width / n, round(n), alpha, tuning) - z * math.sqrt(spread / n)

    low, high = math.log(4.0), math.log(float(MAX_N))
    if shortfall(low, False) >= 0:
        return math.ceil((1 - share) * 4.0), math.ceil(share * 4.0)
    if shortfall(high, False) < 0:
        raise StatsInputError("effect", f"too small to detect: it needs over {MAX_N:,} samples")
    last_look = optimize.brentq(shortfall, low, high, args=(False,), xtol=1e-9)
    log_n = last_look
    if anytime:  # fewer: usually 0.8-0.95 times the last look's size, at least a quarter
        for fewer in (1.5, 4.0):
            near = max(low, last_look - math.log(fewer))
            if shortfall(near, True) < 0 < shortfall(last_look, True):
                log_n = optimize.brentq(shortfall, near, last_look, args=(True,), xtol=1e-7)
                break
    n_total = math.exp(log_n)
    return math.ceil((1 - share) * n_total), math.ceil(share * n_total)
