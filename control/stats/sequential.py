"""Sequential testing: asymptotic confidence sequences (Waudby-Smith et al. 2023), as in
GrowthBook's gbstats. They hold at every look at once, so an automated gate may check every
tick without inflating the false-positive rate above alpha. The always-valid p-value is the
smallest alpha whose sequence excludes zero."""

from __future__ import annotations

import math

from scipy import optimize

from control.stats.frequentist import TestResult, relative_effect
from control.stats.models import SampleMean, StatsInputError

TUNING = 5000.0  # gbstats' N*: the sample size around which the sequence is tightest


def _rho(alpha: float, tuning: float) -> float:
    return math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning)


def half_width(variance: float, n_total: int, alpha: float, tuning: float = TUNING) -> float:
    """Half-width of the sequence for an estimate whose variance is `variance` at `n_total`
    observations in all."""
    rho = _rho(alpha, tuning)
    s2 = variance * n_total
    return math.sqrt(s2) * math.sqrt(
        (2 * (n_total * rho ** 2 + 1)) / (n_total ** 2 * rho ** 2)
        * math.log(math.sqrt(n_total * rho ** 2 + 1) / alpha))


def sequential_test(a: SampleMean, b: SampleMean, *, alpha: float = 0.05,
                    tuning: float = TUNING) -> TestResult:
    """Difference of means with an always-valid interval and p-value (two-sided)."""
    variance = a.variance / a.n + b.variance / b.n
    if variance == 0:
        raise StatsInputError("a.std", "both arms have zero variance: nothing to test")
    n_total = a.n + b.n
    diff = b.mean - a.mean
    width = half_width(variance, n_total, alpha, tuning)

    def excludes_zero_margin(log_alpha: float) -> float:
        return abs(diff) - half_width(variance, n_total, math.exp(log_alpha), tuning)

    if excludes_zero_margin(math.log(1 - 1e-12)) <= 0:
        p = 1.0  # even the narrowest sequence (alpha -> 1) still holds 0
    elif excludes_zero_margin(math.log(1e-300)) > 0:
        p = 1e-300
    else:
        p = math.exp(optimize.brentq(excludes_zero_margin, math.log(1e-300),
                                     math.log(1 - 1e-12), xtol=1e-12))
    lift, ci_rel = relative_effect(a, b, width / math.sqrt(variance))
    return TestResult("sequential", min(1.0, p), 1 - alpha, p < alpha, diff, lift,
                      (diff - width, diff + width), ci_rel, a.n, b.n)
