"""Fixed-horizon tests: Welch's t for means, two-proportion z (= chi-square) and Fisher's
exact test for rates; absolute and relative effects with confidence intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy import special

from abgate.control.stats.models import Alternative, Proportion, SampleMean, StatsInputError


@dataclass(frozen=True, slots=True)
class TestResult:
    test: str
    p_value: float
    confidence_level: float
    significant: bool
    effect_absolute: float
    effect_relative: float | None  # None when the control mean is 0
    # A one-sided test has a one-sided interval: the open end is None.
    ci_absolute: tuple[float | None, float | None]
    ci_relative: tuple[float | None, float | None] | None
    n_a: int
    n_b: int

    def as_json(self) -> dict[str, Any]:
        # Built by hand: dataclasses.asdict deep-copies, and was most of an evaluation's time.
        ci = self.ci_relative
        return {
            "test": self.test,
            "p_value": self.p_value,
            # 1 - p: the highest level at which the interval excludes no difference
            # (Optimizely's "statistical significance"); the interval's own level beside it.
            "confidence_level": 1 - self.p_value,
            "interval_level": self.confidence_level,
            "alpha": round(1 - self.confidence_level, 12),
            "significant": self.significant,
            "effect": {"absolute": self.effect_absolute, "relative": self.effect_relative},
            "ci": {"absolute": list(self.ci_absolute), "relative": list(ci) if ci else None},
            "n": {"a": self.n_a, "b": self.n_b},
        }


def _tail_p(statistic: float, alternative: Alternative, sf: Any, cdf: Any) -> float:
    if alternative == "greater":
        return float(sf(statistic))
    if alternative == "less":
        return float(cdf(statistic))
    return float(min(1.0, 2 * sf(abs(statistic))))


Bounds = tuple[float | None, float | None]


def _sided(interval: tuple[float, float], alternative: Alternative) -> Bounds:
    """The bound a one-sided test stands on (computed at level 1 - 2 alpha two-sided)."""
    if alternative == "greater":
        return interval[0], None
    if alternative == "less":
        return None, interval[1]
    return interval


def _level(alpha: float, alternative: Alternative) -> float:
    """The two-sided alpha whose interval gives the one-sided bounds at `alpha`."""
    return alpha if alternative == "two-sided" else 2 * alpha


def relative_effect(
    a: SampleMean,
    b: SampleMean,
    z: float,
) -> tuple[float | None, tuple[float, float] | None]:
    """(b - a) / a with a delta-method interval (as gbstats does); None when a's mean is 0."""
    if a.mean == 0:
        return None, None
    lift = (b.mean - a.mean) / a.mean
    ratio = b.mean / a.mean
    # each arm's standard error relative to a's mean, divided before squaring: no overflow
    relative_b = math.sqrt(b.variance / b.n) / abs(a.mean)
    relative_a = math.sqrt(a.variance / a.n) / abs(a.mean)
    variance = relative_b * relative_b + ratio * ratio * relative_a * relative_a
    half = z * math.sqrt(variance)
    return lift, (lift - half, lift + half)


def welch_t(
    a: SampleMean, b: SampleMean, *, alpha: float = 0.05, alternative: Alternative = "two-sided"
) -> TestResult:
    """Welch's t-test with Satterthwaite degrees of freedom; the p-value equals scipy's
    `ttest_ind_from_stats(..., equal_var=False)`."""
    va, vb = a.variance / a.n, b.variance / b.n
    if va + vb == 0:
        raise StatsInputError("a.std", "both arms have zero variance: nothing to test")
    se = math.sqrt(va + vb)
    share_a, share_b = va / (va + vb), vb / (va + vb)  # scaled first: no overflow
    df = 1 / (share_a * share_a / (a.n - 1) + share_b * share_b / (b.n - 1))
    diff = b.mean - a.mean
    t = diff / se
    p = _tail_p(t, alternative, lambda x: special.stdtr(df, -x), lambda x: special.stdtr(df, x))
    crit = float(-special.stdtrit(df, _level(alpha, alternative) / 2))
    lift, ci_rel = relative_effect(a, b, crit)  # the same t as the absolute interval
    return TestResult(
        "welch_t",
        p,
        1 - alpha,
        p < alpha,
        diff,
        lift,
        _sided((diff - crit * se, diff + crit * se), alternative),
        _sided(ci_rel, alternative) if ci_rel else None,
        a.n,
        b.n,
    )


def two_proportion(
    a: Proportion,
    b: Proportion,
    *,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
    design: tuple[float, float] = (1.0, 1.0),
) -> TestResult:
    """Two-proportion z-test with the pooled variance (statsmodels' `proportions_ztest`; the
    two-sided p-value equals the chi-square test without continuity correction); interval
    from the unpooled variance. `design`: each arm's design effect (clustered users)."""
    da, db = design
    pooled = (a.successes + b.successes) / (a.n + b.n)
    se0 = math.sqrt(pooled * (1 - pooled) * (da / a.n + db / b.n))
    if se0 == 0:
        raise StatsInputError(
            "a.successes", "no variation: every observation in both arms has the same outcome"
        )
    diff = b.rate - a.rate
    z = diff / se0
    p = _tail_p(z, alternative, lambda x: special.ndtr(-x), special.ndtr)
    crit = float(-special.ndtri(_level(alpha, alternative) / 2))
    se = math.sqrt(da * a.rate * (1 - a.rate) / a.n + db * b.rate * (1 - b.rate) / b.n)
    lift, ci_rel = relative_effect(a.as_mean(da), b.as_mean(db), crit)
    return TestResult(
        "two_proportion",
        p,
        1 - alpha,
        p < alpha,
        diff,
        lift,
        _sided((diff - crit * se, diff + crit * se), alternative),
        _sided(ci_rel, alternative) if ci_rel else None,
        a.n,
        b.n,
    )


# scipy's Fisher test walks the hypergeometric support: its time grows with n (about 10 ms
# at 10^6 observations, 0.15 s at 10^7, 17.8 s at 6 x 10^9, issue 26). Beyond this many
# observations in all, the exact test's binomial limit takes its place (below).
FISHER_MAX_N = 1_000_000


def fisher_exact(
    a: Proportion, b: Proportion, *, alpha: float = 0.05, alternative: Alternative = "two-sided"
) -> TestResult:
    """Fisher's exact test, for small counts (an expected cell under 5); beyond
    FISHER_MAX_N observations, its binomial limit (`conditional_binomial_p`), whose cost
    does not grow with n."""
    if a.n + b.n > FISHER_MAX_N:
        name, p = "conditional_binomial", conditional_binomial_p(a, b, alternative)
    else:
        from scipy import stats  # the exact test only; the rest uses lighter special functions

        table = [[b.successes, b.n - b.successes], [a.successes, a.n - a.successes]]
        name, p = "fisher_exact", float(stats.fisher_exact(table, alternative=alternative).pvalue)
    base = (
        two_proportion(a, b, alpha=alpha, alternative=alternative)
        if 0 < a.successes + b.successes < a.n + b.n
        else None
    )
    diff = b.rate - a.rate
    # For the small counts this test is for, a Wald interval contradicts it; Newcombe's
    # hybrid score interval (from the Wilson bounds of each rate) behaves at 0 and 1.
    return TestResult(
        name,
        p,
        1 - alpha,
        p < alpha,
        diff,
        base.effect_relative if base else None,
        _sided(newcombe_interval(a, b, _level(alpha, alternative)), alternative),
        base.ci_relative if base else None,
        a.n,
        b.n,
    )


def conditional_binomial_p(a: Proportion, b: Proportion, alternative: Alternative) -> float:
    """Fisher's test in its binomial limit, for many observations and an expected cell
    under 5. Fisher conditions on the margins: b's count of the rarer outcome is
    hypergeometric. With n in all and k of the rarer outcome, an expected cell under 5 means
    min(k, n_b) < sqrt(5 n), a vanishing share of n beyond FISHER_MAX_N, and then the
    hypergeometric is binomial: each of the k outcomes falls in arm b with probability
    n_b / n (or each of b's n_b observations is the outcome with probability k / n, whichever
    has fewer draws). scipy's binomtest on it costs the same at any n."""
    from scipy import stats

    n = a.n + b.n
    successes = a.successes + b.successes
    rare_successes = successes <= n - successes
    k = successes if rare_successes else n - successes
    x = b.successes if rare_successes else b.n - b.successes
    if k <= b.n:
        draws, chance = k, b.n / n
    else:
        draws, chance = b.n, k / n
    if draws == 0:
        return 1.0
    # A higher rate in b is more of the rare outcome in b when successes are rare, fewer
    # when failures are.
    flipped = {"greater": "less", "less": "greater", "two-sided": "two-sided"}
    side = alternative if rare_successes else flipped[alternative]
    return float(stats.binomtest(x, draws, chance, alternative=side).pvalue)


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
    return (
        diff - math.sqrt((b.rate - low_b) ** 2 + (high_a - a.rate) ** 2),
        diff + math.sqrt((high_b - b.rate) ** 2 + (a.rate - low_a) ** 2),
    )


def rates_test(
    a: Proportion,
    b: Proportion,
    *,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
    design: tuple[float, float] = (1.0, 1.0),
) -> TestResult:
    """The z-test, or Fisher's exact test when any expected cell count is under 5 (on
    requests: an exact test cannot take clustering; this fixed-horizon result is reported,
    the gates decide on the sequential one)."""
    total = a.n + b.n
    successes = a.successes + b.successes
    expected = [n * k / total for n in (a.n, b.n) for k in (successes, total - successes)]
    if min(expected) < 5:
        return fisher_exact(a, b, alpha=alpha, alternative=alternative)
    return two_proportion(a, b, alpha=alpha, alternative=alternative, design=design)
