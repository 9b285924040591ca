"""Sample-ratio mismatch (on distinct users where users are the unit) and Holm's correction."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import special

from abgate.control.stats.models import StatsInputError

SRM_THRESHOLD = 0.001  # GrowthBook warns below this


def distinct_users(bits_set: int, bits: int) -> tuple[float, float]:
    """Linear counting (Whang, Vander-Zanden and Taylor 1990): the number of distinct users
    behind a bitmap of `bits` with `bits_set` set, and the variance of that estimate,
    bits * (e^t - t - 1) at load t = n / bits (under 0.1% of n up to a million users in a
    2**20-bit map). A full map cannot be read: infinite variance."""
    if not 0 <= bits_set <= bits:
        raise StatsInputError("bits_set", f"expected 0 to {bits}, got {bits_set}")
    if bits_set == bits:
        return float(bits) * math.log(bits), math.inf
    load = -math.log1p(-bits_set / bits)
    return bits * load, bits * (math.expm1(load) - load)


def srm(
    observed: Sequence[float],
    weights: Sequence[float],
    counting_variance: Sequence[float] | None = None,
) -> float:
    """p-value that the arm counts follow the configured split: chi-square goodness of fit
    (as GrowthBook), an exact binomial test for two arms when an expected count is under 5,
    and 0 when an arm that should get nothing got something (at 0% or 100%).

    `counting_variance` (two arms): the variance of each count when it is itself an
    estimate (distinct users by linear counting); added to the binomial variance of the
    two-arm test, z^2 = chi-square."""
    edge = _srm_edge(observed, weights)
    if edge is not None:
        return edge
    total = sum(observed)
    scale = total / sum(weights)
    expected = [w * scale for w in weights if w > 0]
    observed = [o for o, w in zip(observed, weights, strict=True) if w > 0]
    if len(observed) < 2:
        return 1.0  # one arm takes everything, as configured
    if len(observed) == 2 and min(expected) < 5:
        from scipy import stats  # the exact test only

        share = expected[0] / total
        rounded = round(total)
        return float(stats.binomtest(min(rounded, round(observed[0])), rounded, share).pvalue)
    if counting_variance is not None and len(observed) == 2 and any(counting_variance):
        if any(math.isinf(v) for v in counting_variance):
            return 1.0  # a count that cannot be read says nothing
        share = expected[1] / total
        extra = (1 - share) ** 2 * counting_variance[1] + share**2 * counting_variance[0]
        z = (observed[1] - share * total) / math.sqrt(total * share * (1 - share) + extra)
        return float(special.chdtrc(1, z * z))
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    return float(special.chdtrc(len(observed) - 1, statistic))


def _srm_edge(observed: Sequence[float], weights: Sequence[float]) -> float | None:
    """Both tests' answer where the counts decide it alone (else None): no traffic yet says
    nothing; traffic to an arm that should get none is a mismatch for certain."""
    if len(observed) != len(weights) or len(observed) < 2:
        raise StatsInputError("observed", "need one count per arm, at least two arms")
    if sum(observed) == 0:
        return 1.0
    if any(w <= 0 and o > 0 for o, w in zip(observed, weights, strict=True)):
        return 0.0
    return None


SRM_CONCENTRATION = 1000.0  # the Dirichlet prior's weight, in observations


def sequential_srm(
    observed: Sequence[float],
    weights: Sequence[float],
    counting_variance: Sequence[float] | None = None,
    concentration: float = SRM_CONCENTRATION,
) -> float:
    """Always-valid p-value that the arm counts follow the configured split: Lindon and
    Malek's sequential multinomial test (2022), 1 / the Bayes factor of a Dirichlet-
    multinomial mixture (prior centred on the split, `concentration` observations strong)
    against the split. The Bayes factor is a martingale under the split, so by Ville's
    inequality the chance that it ever reaches 1/alpha, however often it is looked at, is
    at most alpha: the gates and the worker check it every tick without the fixed test's
    inflation (1.2-3.0% of A/A rollouts held for "integrity", issue 26).

    `counting_variance` (two arms): the variance of each count when it is itself an
    estimate (distinct users by linear counting); the counts are shrunk by the variance it
    adds to the binomial's (the evidence of fewer, exact counts). Edges as `srm`."""
    edge = _srm_edge(observed, weights)
    if edge is not None:
        return edge
    total = sum(observed)
    kept = [(o, w) for o, w in zip(observed, weights, strict=True) if w > 0]
    if len(kept) < 2:
        return 1.0  # one arm takes everything, as configured
    scale = sum(w for _, w in kept)
    shares = [w / scale for _, w in kept]
    counts = [max(0.0, o) for o, _ in kept]
    if counting_variance is not None and len(kept) == 2 and any(counting_variance):
        if any(math.isinf(v) for v in counting_variance):
            return 1.0  # a count that cannot be read says nothing
        share = shares[1]
        extra = (1 - share) ** 2 * counting_variance[1] + share**2 * counting_variance[0]
        inflation = 1 + extra / (total * share * (1 - share))
        counts = [c / inflation for c in counts]
    n = sum(counts)
    prior = [concentration * share for share in shares]
    log_factor = (
        special.gammaln(concentration)
        - special.gammaln(concentration + n)
        + sum(
            special.gammaln(a + x) - special.gammaln(a) - x * math.log(share)
            for a, x, share in zip(prior, counts, shares, strict=True)
        )
    )
    return float(min(1.0, math.exp(min(0.0, -log_factor))))


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
