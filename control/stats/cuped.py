"""CUPED: a metric adjusted by a covariate from before the experiment (Deng et al. 2013, as
GrowthBook, Statsig and Eppo apply it), from sufficient statistics only.

An outcome posted with a `covariate` (its user's value of the same metric before they were
exposed: last month's conversions, their earlier accuracy) adds three sums per cluster of
users: the metric's own (y), the covariate's (x, under `metric~pre`) and their product
(xy, under `metric~cross`). Where every outcome of a metric in a phase carried one, in both
arms, each arm's metric is replaced by its adjusted values y - theta * (x - mean_x), with
theta = cov(x, y) / var(x) pooled over both arms of the phase. The adjustment leaves each
arm's expected mean difference as it was (x is independent of the arm: it was measured
before the split) and removes the part of the variance that x explains: a sample size falls
by the squared correlation of x and y. The adjusted sums carry their clusters, so the delta
method per user (control/stats/clusters.py) applies to them unchanged.

An adjusted metric is a mean, whatever its declared type: the tests of means judge it
(`analysed_as_rate`). Where the covariate is missing for some outcomes, nothing is adjusted.
Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from abgate.config.model import MetricConfig
from abgate.control.stats.clusters import ClusteredSums
from abgate.state.measurements import CROSS, PRE

# cluster id -> (whole users, count, sum, sum of squares), as ClusteredSums.of takes them
Clusters = Mapping[int, tuple[bool, int, float, float]]


def is_covariate(metric: str) -> bool:
    return metric.endswith((PRE, CROSS))


def analysed_as_rate(metric: MetricConfig, sums: ClusteredSums) -> bool:
    """Whether the rates test judges this metric: a 0/1 metric, unless CUPED adjusted it
    (its adjusted values are not 0/1: a test of means does)."""
    return metric.type == "binary" and not sums.adjusted


def theta(
    y: tuple[Clusters, Clusters], x: tuple[Clusters, Clusters], xy: tuple[Clusters, Clusters]
) -> tuple[float, float] | None:
    """(theta, the covariate's pooled mean) over both arms; None when the covariate does not
    cover every outcome or does not vary."""
    n = sx = sy = sxx = sxy = 0.0
    for arm in (0, 1):
        count_y = sum(c[1] for c in y[arm].values())
        count_x = sum(c[1] for c in x[arm].values())
        count_xy = sum(c[1] for c in xy[arm].values())
        if not count_y or count_x != count_y or count_xy != count_y:
            return None
        n += count_y
        sy += sum(c[2] for c in y[arm].values())
        sx += sum(c[2] for c in x[arm].values())
        sxx += sum(c[3] for c in x[arm].values())
        sxy += sum(c[2] for c in xy[arm].values())
    mean_x, mean_y = sx / n, sy / n
    var_x = sxx / n - mean_x * mean_x
    if var_x <= 1e-12 * max(1.0, mean_x * mean_x):
        return None
    return (sxy / n - mean_x * mean_y) / var_x, mean_x


def adjusted(
    y: Clusters, x: Clusters, xy: Clusters, slope: float, mean_x: float
) -> ClusteredSums | None:
    """One arm's metric as its adjusted values' clustered sums; None where a cluster's
    covariates do not match its outcomes."""
    clusters = []
    for cluster, (whole, n, s, s2) in y.items():
        cx, cxy = x.get(cluster), xy.get(cluster)
        if cx is None or cxy is None or cx[1] != n or cxy[1] != n:
            return None
        _, _, s_x, s_xx = cx
        s_xy = cxy[2]
        centred = s_x - n * mean_x  # sum of (x - mean_x)
        total = s - slope * centred
        # sum of (y - slope (x - mean_x))^2, expanded into the sums kept
        square = (
            s2
            - 2 * slope * (s_xy - mean_x * s)
            + slope * slope * (s_xx - 2 * mean_x * s_x + n * mean_x * mean_x)
        )
        clusters.append((whole, n, total, max(0.0, square)))
    return replace(ClusteredSums.of(clusters), adjusted=True)
