"""Achieved power and the sample size needed: Cohen's d for means (noncentral t, as
statsmodels' TTestIndPower), Cohen's h for rates (normal, as NormalIndPower)."""

from __future__ import annotations

import math

from scipy import optimize, special

from abgate.control.stats.models import StatsInputError
from abgate.control.summary_bounds import MAX_N


def _check(alpha: float, power: float | None = None) -> None:
    if not 0 < alpha < 1:
        raise StatsInputError("alpha", f"must be between 0 and 1, got {alpha}")
    if power is not None and not alpha < power < 1:
        raise StatsInputError("power", f"must be between alpha and 1, got {power}")


def mean_power(effect_size: float, n_per_arm: float, alpha: float = 0.05) -> float:
    """Two-sided two-sample t-test power for Cohen's d with n per arm."""
    _check(alpha)
    df = 2 * n_per_arm - 2
    nc = effect_size * math.sqrt(n_per_arm / 2)
    crit = -special.stdtrit(df, alpha / 2)
    power = float(1 - special.nctdtr(df, nc, crit) + special.nctdtr(df, nc, -crit))
    if not math.isfinite(power):  # the noncentral t fails at some points (far in the tail)
        z = -special.ndtri(alpha / 2)
        power = float(special.ndtr(nc - z) + special.ndtr(-z - nc))
    return min(1.0, max(0.0, power))


def mean_sample_size(effect_size: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Smallest n per arm reaching `power` for Cohen's d."""
    _check(alpha, power)
    if effect_size == 0 or not math.isfinite(effect_size):
        raise StatsInputError("effect_size", "must be a finite number other than 0")
    # The normal approximation brackets the root (nct is unstable far beyond it).
    ratio = float(-special.ndtri(alpha / 2) + special.ndtri(power)) / abs(effect_size)
    if ratio > math.sqrt(MAX_N / 2):  # compared before squaring: 1e-300 would overflow
        raise StatsInputError(
            "effect_size", f"too small to detect: it needs over {MAX_N:,} samples per arm"
        )
    if mean_power(abs(effect_size), 2.0, alpha) >= power:
        return 2  # so large that the smallest experiment detects it
    solved = optimize.brentq(
        lambda n: mean_power(abs(effect_size), n, alpha) - power, 2.0, 4 * ratio**2 + 10
    )
    return math.ceil(float(solved))


def cohens_h(baseline: float, target: float) -> float:
    return 2 * math.asin(math.sqrt(target)) - 2 * math.asin(math.sqrt(baseline))


def proportion_power(baseline: float, mde: float, n_per_arm: float, alpha: float = 0.05) -> float:
    _check(alpha)
    h = abs(cohens_h(baseline, baseline + mde))
    crit = -special.ndtri(alpha / 2)
    nc = h * math.sqrt(n_per_arm / 2)
    return float(special.ndtr(nc - crit) + special.ndtr(-crit - nc))


def proportion_sample_size(
    baseline: float, mde: float, power: float = 0.8, alpha: float = 0.05
) -> int:
    """Smallest n per arm to detect baseline -> baseline + mde (absolute) with `power`."""
    _check(alpha, power)
    if not 0 < baseline < 1:
        raise StatsInputError("baseline_rate", f"must be between 0 and 1, got {baseline}")
    if mde == 0 or not 0 < baseline + mde < 1:
        raise StatsInputError(
            "minimum_detectable_effect",
            f"baseline + effect must stay in (0, 1) and differ, got {mde}",
        )

    def shortfall(n: float) -> float:
        return proportion_power(baseline, mde, n, alpha) - power

    if shortfall(1.0) >= 0:
        return 1
    if shortfall(float(MAX_N)) < 0:
        raise StatsInputError(
            "minimum_detectable_effect",
            f"too small to detect: it needs over {MAX_N:,} samples per arm",
        )
    return math.ceil(float(optimize.brentq(shortfall, 1.0, float(MAX_N))))


def mean_detectable_effect(
    a_variance: float,
    b_variance: float,
    n_a: int,
    n_b: int,
    power: float = 0.8,
    alpha: float = 0.05,
) -> float:
    """The smallest absolute difference of means a two-sided test at `alpha` detects with
    `power` at these sample sizes (normal approximation): what the data can still tell,
    unlike power at the observed effect, which is only a function of the p-value."""
    _check(alpha, power)
    z = float(-special.ndtri(alpha / 2) + special.ndtri(power))
    return z * math.sqrt(a_variance / n_a + b_variance / n_b)


def rate_detectable_effect(
    baseline: float, n_a: int, n_b: int, power: float = 0.8, alpha: float = 0.05
) -> float:
    """The same for rates, from the control's rate (p(1-p) per arm)."""
    variance = baseline * (1 - baseline)
    return mean_detectable_effect(variance, variance, n_a, n_b, power, alpha)
