"""Sample-ratio mismatch and Holm's correction."""

from __future__ import annotations

from collections.abc import Sequence

from scipy import special

from control.stats.models import StatsInputError

SRM_THRESHOLD = 0.001  # GrowthBook warns below this


def srm(observed: Sequence[int], weights: Sequence[float]) -> float:
    """p-value of a chi-square goodness-of-fit of the arm counts to the configured split."""
    if len(observed) != len(weights) or len(observed) < 2:
        raise StatsInputError("observed", "need one count per arm, at least two arms")
    if any(w <= 0 for w in weights):
        return 1.0  # an arm that should get nothing: a mismatch test says nothing here
    total = sum(observed)
    if total == 0:
        return 1.0
    scale = total / sum(weights)
    expected = [w * scale for w in weights]
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
