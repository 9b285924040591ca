"""Fixed-horizon tests: Welch's t for means, two-proportion z (= chi-square) and Fisher's
exact test for rates; absolute and relative effects with confidence intervals."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy import special

from control.stats.models import Alternative, Proportion, SampleMean, StatsInputError


@dataclass(frozen=True, slots=True)
class TestResult:
    test: str
    p_value: float
    confidence_level: float
    significant: bool
    effect_absolute: float
    effect_relative: float | None  # None when the control mean is 0
    ci_absolute: tuple[float, float]
    ci_relative: tuple[float, float] | None
    n_a: int
    n_b: int

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["effect"] = {"absolute": out.pop("effect_absolute"),
                         "relative": out.pop("effect_relative")}
        out["ci"] = {"absolute": list(out.pop("ci_absolute")),
                     "relative": list(ci) if (ci := out.pop("ci_relative")) else None}
        out["n"] = {"a": out.pop("n_a"), "b": out.pop("n_b")}
        return out


def _tail_p(statistic: float, alternative: Alternative, sf: Any, cdf: Any) -> float:
    if alternative == "greater":
        return float(sf(statistic))
    if alternative == "less":
        return float(cdf(statistic))
    return float(min(1.0, 2 * sf(abs(statistic))))


def relative_effect(a: SampleMean, b: SampleMean, z: float,
                    ) -> tuple[float | None, tuple[float, float] | None]:
    """(b - a) / a with a delta-method interval (as gbstats does); None when a's mean is 0."""
    if a.mean == 0:
        return None, None
    lift = (b.mean - a.mean) / a.mean
    variance = b.variance / (b.n * a.mean ** 2) + \
        (b.mean ** 2) * a.variance / (a.n * a.mean ** 4)
    half = z * math.sqrt(variance)
    return lift, (lift - half, lift + half)


def welch_t(a: SampleMean, b: SampleMean, *, alpha: float = 0.05,
            alternative: Alternative = "two-sided") -> TestResult:
    """Welch's t-test with Satterthwaite degrees of freedom; the p-value equals scipy's
    `ttest_ind_from_stats(..., equal_var=False)`."""
    va, vb = a.variance / a.n, b.variance / b.n
    if va + vb == 0:
        raise StatsInputError("a.std", "both arms have zero variance: nothing to test")
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    diff = b.mean - a.mean
    t = diff / se
    p = _tail_p(t, alternative, lambda x: special.stdtr(df, -x), lambda x: special.stdtr(df, x))
    crit = float(-special.stdtrit(df, alpha / 2))
    lift, ci_rel = relative_effect(a, b, crit)  # the same t as the absolute interval
    return TestResult("welch_t", p, 1 - alpha, p < alpha, diff, lift,
                      (diff - crit * se, diff + crit * se), ci_rel, a.n, b.n)


def two_proportion(a: Proportion, b: Proportion, *, alpha: float = 0.05,
                   alternative: Alternative = "two-sided") -> TestResult:
    """Two-proportion z-test with the pooled variance (statsmodels' `proportions_ztest`; the
    two-sided p-value equals the chi-square test without continuity correction); interval
    from the unpooled variance."""
    pooled = (a.successes + b.successes) / (a.n + b.n)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / a.n + 1 / b.n))
    if se0 == 0:
        raise StatsInputError("a.successes", "no variation: every observation in both arms "
                                             "has the same outcome")
    diff = b.rate - a.rate
    z = diff / se0
    p = _tail_p(z, alternative, lambda x: special.ndtr(-x), special.ndtr)
    crit = float(-special.ndtri(alpha / 2))
    se = math.sqrt(a.rate * (1 - a.rate) / a.n + b.rate * (1 - b.rate) / b.n)
    lift, ci_rel = relative_effect(a.as_mean(), b.as_mean(), crit)
    return TestResult("two_proportion", p, 1 - alpha, p < alpha, diff, lift,
                      (diff - crit * se, diff + crit * se), ci_rel, a.n, b.n)


def fisher_exact(a: Proportion, b: Proportion, *, alpha: float = 0.05,
                 alternative: Alternative = "two-sided") -> TestResult:
    """Fisher's exact test, for small counts (an expected cell under 5)."""
    from scipy import stats  # the exact test only; the rest uses the lighter special functions

    table = [[b.successes, b.n - b.successes], [a.successes, a.n - a.successes]]
    p = float(stats.fisher_exact(table, alternative=alternative).pvalue)
    base = two_proportion(a, b, alpha=alpha) if 0 < a.successes + b.successes < a.n + b.n \
        else None
    diff = b.rate - a.rate
    # For the small counts this test is for, a Wald interval contradicts it; Newcombe's
    # hybrid score interval (from the Wilson bounds of each rate) behaves at 0 and 1.
    return TestResult("fisher_exact", p, 1 - alpha, p < alpha, diff,
                      base.effect_relative if base else None,
                      newcombe_interval(a, b, alpha),
                      base.ci_relative if base else None, a.n, b.n)


def wilson_interval(x: Proportion, alpha: float) -> tuple[float, float]:
    z = float(-special.ndtri(alpha / 2))
    n, p = x.n, x.rate
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(a: Proportion, b: Proportion, alpha: float) -> tuple[float, float]:
    """Interval for b's rate minus a's (Newcombe 1998, method 10)."""
    low_a, high_a = wilson_interval(a, alpha)
    low_b, high_b = wilson_interval(b, alpha)
    diff = b.rate - a.rate
    return (diff - math.sqrt((b.rate - low_b) ** 2 + (high_a - a.rate) ** 2),
            diff + math.sqrt((high_b - b.rate) ** 2 + (a.rate - low_a) ** 2))


def rates_test(a: Proportion, b: Proportion, *, alpha: float = 0.05,
               alternative: Alternative = "two-sided") -> TestResult:
    """The z-test, or Fisher's exact test when any expected cell count is under 5."""
    total = a.n + b.n
    successes = a.successes + b.successes
    expected = [n * k / total for n in (a.n, b.n) for k in (successes, total - successes)]
    if min(expected) < 5:
        return fisher_exact(a, b, alpha=alpha, alternative=alternative)
    return two_proportion(a, b, alpha=alpha, alternative=alternative)
