"""Users as the unit: an arm's metric as a ratio over clusters of whole users.

Users are randomised, not requests. A user's requests are correlated (the same user is fast
or slow, converts or not), so treating requests as independent understates the variance: with
about 3 requests per user an A/A latency test rejected 9.7% of the time at alpha 5%, with
heavy users over half the time. gbstats analyses such metrics per user as ratio metrics with
the delta method (Deng et al. 2018, "Applying the Delta Method in Metric Analytics").

Keeping a row per user is unbounded, so the proxy keeps sums per *cluster* of users: the
low bits of the user's hash, `CLUSTERS` of them (state/measurements.py). A cluster is a
union of whole users, each user in exactly one, and the clusters of an arm are independent
of each other, so the delta method over clusters is valid for the same reason it is over
users (clustering coarser than the unit of randomisation is; finer is not). Requests with
no user (no sticky key) are each their own cluster: for them the request is the unit.

With clusters i of n_i requests summing to s_i, the arm's mean is m = sum s / sum n and

    Var(m) = K / (K - 1) * sum (s_i - m n_i)^2 / (sum n)^2        (K clusters)

which only needs K, sum n, sum s, sum n^2, sum s^2 and sum n s. For a rate under the null of
no difference, m is replaced by the pooled rate: the null variance the sequential test on
rates needs. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from abgate.control.stats.models import Proportion, SampleMean

MIN_CLUSTERS = 20  # per arm, before any test: fewer and the variance estimate is too rough
MIN_SAMPLES = 2  # per arm, before any test; fewer is "not enough data", never an error


@dataclass(frozen=True, slots=True)
class ClusteredSums:
    """One arm's metric: request-level sums and the cluster moments of the delta method."""

    count: int  # requests (observations)
    total: float  # sum of the values
    total_sq: float  # sum of the squared values
    clusters: int  # K: clusters with data, each request without a user counted as one
    count_sq: float  # sum over clusters of n_i^2
    cluster_sq: float  # sum over clusters of s_i^2
    cross: float  # sum over clusters of n_i * s_i
    adjusted: bool = False  # values adjusted by a pre-experiment covariate (stats/cuped.py)

    @classmethod
    def of(cls, clusters: Iterable[tuple[bool, int, float, float]]) -> ClusteredSums:
        """From (whole_users, count, total, total_sq) per cluster; a cluster that is not
        `whole_users` holds requests without a user, each its own unit."""
        count = clusters_k = 0
        total = total_sq = count_sq = cluster_sq = cross = 0.0
        for whole_users, n, s, s2 in clusters:
            if n <= 0:
                continue
            count += n
            total += s
            total_sq += s2
            if whole_users:
                clusters_k += 1
                count_sq += n * n
                cluster_sq += s * s
                cross += n * s
            else:  # n singletons: n_i = 1, s_i = x_i
                clusters_k += n
                count_sq += n
                cluster_sq += s2
                cross += s
        return cls(count, total, total_sq, clusters_k, count_sq, cluster_sq, cross)

    @classmethod
    def independent(cls, count: int, total: float, total_sq: float) -> ClusteredSums:
        """Observations that are each their own unit (no users behind them)."""
        return cls.of([(False, count, total, total_sq)])

    @property
    def mean(self) -> float:
        return self.total / self.count

    def variance_of_mean(self, centre: float | None = None) -> float:
        """The delta-method variance of the arm's mean; `centre` replaces the mean (the
        pooled rate, for the variance under the null). Never below the variance the
        requests would have if independent: users' requests are not negatively correlated,
        and with few clusters the clustered estimate is itself noisy."""
        n, k = self.count, self.clusters
        m = self.mean if centre is None else centre
        iid = self._request_variance(m) / n
        if k < 2:
            return iid
        spread = self.cluster_sq - 2 * m * self.cross + m * m * self.count_sq
        return max(iid, k / (k - 1) * max(0.0, spread) / (n * n))

    def _request_variance(self, centre: float) -> float:
        n = self.count
        if n < 2:
            return 0.0
        squares = self.total_sq - 2 * centre * self.total + n * centre * centre
        return max(0.0, squares) / (n - 1)

    def as_mean(self) -> SampleMean:
        """The arm as a SampleMean whose variance / n is the clustered variance of the mean,
        so Welch's t, the confidence sequences and the phase weighting use it unchanged."""
        return SampleMean(self.count, self.mean, self.variance_of_mean() * self.count)

    def design_effect(self, centre: float) -> float:
        """How much clustering inflates the variance of a rate at `centre` (>= 1)."""
        iid = centre * (1 - centre) / self.count
        if iid <= 0:
            return 1.0
        return max(1.0, self.variance_of_mean(centre) / iid)


def proportion(sums: ClusteredSums) -> Proportion:
    """Successes of a 0/1 metric; values are checked to be 0 or 1 where they come in."""
    return Proportion(sums.count, min(sums.count, max(0, round(sums.total))))


def clustered_rates(
    a: ClusteredSums, b: ClusteredSums
) -> tuple[Proportion, Proportion, tuple[float, float]]:
    """Two arms of a 0/1 metric as the rates test takes them: each arm's successes and its
    design effect, at the arm's own rate. At any other centre (the pooled rate, as before)
    the "design effect" also holds the arm's distance from that centre: for independent
    requests it turned the null's variance back into the arm's own, and a treatment 2
    points worse on errors was caught 15% of the time at the n planned for 80%. The
    worker and the gates both read rates through here, so they test the same thing on the
    same sums."""
    pa, pb = proportion(a), proportion(b)
    return pa, pb, (a.design_effect(pa.rate), b.design_effect(pb.rate))


def comparable(a: ClusteredSums | None, b: ClusteredSums | None) -> bool:
    """Both arms have what any test of them needs (the worker's report, the gates, the
    comparison of record): MIN_SAMPLES samples and MIN_CLUSTERS units each."""
    return (
        a is not None
        and b is not None
        and min(a.count, b.count) >= MIN_SAMPLES
        and min(a.clusters, b.clusters) >= MIN_CLUSTERS
    )
