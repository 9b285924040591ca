"""The sequential test of means under the null, as the rates test is (issue 26 item 3).

Each arm's own (Welch) variance fails on skewed data at small splits: a small arm of
lognormal latencies that has not yet met the tail has both a low mean and a low variance,
so the test calls it "significantly faster" (A/A at a 1% split, lognormal sigma 1: 17% of
runs rejected at alpha 5%; sigma 2: 48%; every rejection "faster"). With users as the unit,
a small arm dominated by one heavy user has a near-zero clustered variance about its own
mean for the same reason.

So, as the score test does for rates (`control.stats.sequential.rates_p`), the variance is
taken where the null puts the means: both arms at the pooled mean (moved apart by the
shift under test), each arm's clustered variance about that centre, and never below what
the pooled requests' variance about those centres gives for the arm's n. Under the null
the small arm's values come from the big arm's distribution, whose tail the big arm has
seen; an arm whose own variance is larger keeps its own. The interval is the set of shifts
this test does not reject (`control.stats.sequential.invert`), so the report's interval and
its significance never disagree. Pure functions of the arms' sums.
"""

from __future__ import annotations

import math

from abgate.control.stats.clusters import ClusteredSums
from abgate.control.stats.frequentist import TestResult
from abgate.control.stats.models import StatsInputError
from abgate.control.stats.sequential import TUNING, always_valid_p, invert, inverted_result


def null_means(a: ClusteredSums, b: ClusteredSums, shift: float = 0.0) -> tuple[float, float]:
    """Both arms' means under the null "b's mean - a's mean = shift": the pooled mean moved
    apart by `shift` (the least-squares solution of the constraint)."""
    centre_a = (a.total + b.total - b.count * shift) / (a.count + b.count)
    return centre_a, centre_a + shift


def _squares(sums: ClusteredSums, centre: float) -> float:
    """Sum of the arm's squared deviations from `centre`."""
    return max(0.0, sums.total_sq - 2 * centre * sums.total + sums.count * centre * centre)


def means_null_variance(a: ClusteredSums, b: ClusteredSums, shift: float = 0.0) -> float:
    """The variance of b's mean - a's under the null "difference = shift"."""
    centre_a, centre_b = null_means(a, b, shift)
    pooled = (_squares(a, centre_a) + _squares(b, centre_b)) / max(1, a.count + b.count - 1)
    return sum(
        max(arm.variance_of_mean(centre), pooled / arm.count)
        for arm, centre in ((a, centre_a), (b, centre_b))
    )


def means_p(
    a: ClusteredSums, b: ClusteredSums, *, shift: float = 0.0, tuning: float = TUNING
) -> float:
    """Always-valid p-value of "b's mean - a's mean = shift" (two-sided sequence; a
    one-sided caller reads it only when the difference lies on its side). The one
    implementation of the sequential test of means: the worker's report and the rollout
    gates' harm and non-inferiority tests call it."""
    variance = means_null_variance(a, b, shift)
    if not variance > 0 or not math.isfinite(variance):
        raise StatsInputError("std", "no variation under the null: nothing to test")
    return always_valid_p(b.mean - a.mean - shift, variance, a.count + b.count, tuning)


def sequential_means(
    a: ClusteredSums, b: ClusteredSums, *, alpha: float = 0.05, tuning: float = TUNING
) -> TestResult:
    """Difference of means (b - a) with an always-valid p-value (`means_p`) and the interval
    of the shifts it does not reject; an end the data cannot bound (one user holding most of
    an arm) is None."""
    p = means_p(a, b, tuning=tuning)
    interval = invert(
        b.mean - a.mean,
        lambda shift: means_null_variance(a, b, shift),
        a.count + b.count,
        alpha,
        tuning,
    )
    return inverted_result(
        p, (a.as_mean(), b.as_mean()), interval, means_null_variance(a, b), alpha, tuning
    )
