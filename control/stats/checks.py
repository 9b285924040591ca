"""Sample-ratio mismatch and Holm's correction."""

from __future__ import annotations

from collections.abc import Sequence

from scipy import special

from control.stats.models import StatsInputError

SRM_THRESHOLD = 0.001  # GrowthBook warns below this


def srm(observed: Sequence[int], weights: Sequence[float]) -> float:
    """p-value that the arm counts follow the configured split: chi-square goodness of fit
    (as GrowthBook), an exact binomial test for two arms when an expected count is under 5,
    and 0 when an arm that should get nothing got something (at 0% or 100%)."""
    if len(observed) != len(weights) or len(observed) < 2:
        raise StatsInputError("observed", "need one count per arm, at least two arms")
    total = sum(observed)
    if total == 0:
        return 1.0
    if any(w <= 0 and o > 0 for o, w in zip(observed, weights, strict=True)):
        return 0.0  # traffic where none should be: a mismatch for certain
    scale = total / sum(weights)
    expected = [w * scale for w in weights if w > 0]
    observed = [o for o, w in zip(observed, weights, strict=True) if w > 0]
    if len(observed) < 2:
        return 1.0  # one arm takes everything, as configured
    if len(observed) == 2 and min(expected) < 5:
        from scipy import stats  # the exact test only

        share = expected[0] / total
        return float(stats.binomtest(observed[0], total, share).pvalue)
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    return float(special.chdtrc(len(observed) - 1, statistic))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    m = len(p_values)
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
