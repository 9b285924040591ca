"""The measurement store's per-cluster sums, gathered per (phase, arm, metric) for the tests.

The store keeps sums per cluster of users (state/measurements.py); the statistics want each
arm's metric as one `ClusteredSums` (control/stats/clusters.py). One pass over what a read
returned."""

from __future__ import annotations

from collections.abc import Mapping

from abgate.config.metrics_catalogue import ERROR_METRIC
from abgate.control.stats import cuped
from abgate.control.stats.checks import distinct_users, sequential_srm
from abgate.control.stats.clusters import ClusteredSums
from abgate.state.measurements import UNCLUSTERED, USER_MAP_BITS, MeasureKey, Sums

ArmKey = tuple[int, str, str]  # phase, arm, metric
EMPTY = ClusteredSums(0, 0.0, 0.0, 0, 0.0, 0.0, 0.0)


def by_arm(sums: Mapping[MeasureKey, Sums]) -> dict[ArmKey, ClusteredSums]:
    """Each (phase, arm, metric) of one experiment's sums as one ClusteredSums; a metric
    whose every outcome in the phase carried a pre-experiment covariate, adjusted by it
    (CUPED, control/stats/cuped.py). The covariates' own sums are not metrics."""
    grouped: dict[ArmKey, dict[int, tuple[bool, int, float, float]]] = {}
    for (_, phase, arm, metric, cluster), s in sums.items():
        grouped.setdefault((phase, arm, metric), {})[cluster] = (
            cluster != UNCLUSTERED,
            s.count,
            s.total,
            s.total_sq,
        )
    arms = {
        key: ClusteredSums.of(clusters.values())
        for key, clusters in grouped.items()
        if not cuped.is_covariate(key[2])
    }
    for phase, metric in {(p, m) for p, _, m in arms}:
        _adjust(grouped, arms, phase, metric)
    return arms


def _adjust(
    grouped: Mapping[ArmKey, cuped.Clusters],
    arms: dict[ArmKey, ClusteredSums],
    phase: int,
    metric: str,
) -> None:
    """Replace a phase's metric in both arms by its CUPED-adjusted sums, where it can be."""
    names = sorted(a for p, a, m in arms if p == phase and m == metric)
    if len(names) != 2:
        return

    def both(name: str) -> tuple[cuped.Clusters, cuped.Clusters]:
        return grouped.get((phase, names[0], name), {}), grouped.get((phase, names[1], name), {})

    y, x, xy = both(metric), both(metric + cuped.PRE), both(metric + cuped.CROSS)
    found = cuped.theta(y, x, xy)
    if found is None:
        return
    slope, mean_x = found
    adjusted = [cuped.adjusted(y[i], x[i], xy[i], slope, mean_x) for i in (0, 1)]
    if None in adjusted:  # both arms or neither: a comparison of like with like
        return
    for arm, sums in zip(names, adjusted, strict=True):
        assert sums is not None
        arms[(phase, arm, metric)] = sums


def of_phase(
    arms: Mapping[ArmKey, ClusteredSums], phase: int, arm: str
) -> dict[str, ClusteredSums]:
    """One arm's metrics in one phase, by metric name."""
    return {m: s for (p, a, m), s in arms.items() if p == phase and a == arm}


Users = Mapping[tuple[int, str], int]  # (phase, arm) -> bits set, from MeasurementStore.users


def units(
    sums: Mapping[MeasureKey, Sums], users: Users, experiment: str, phase: int, arm: str
) -> tuple[float, float]:
    """The units an arm was randomised in during a phase, and the variance of that count:
    its distinct users (estimated from the bitmap) plus its requests without a user (every
    request counts once in `error`)."""
    requests = sums.get((experiment, phase, arm, ERROR_METRIC, UNCLUSTERED))
    keyless = requests.count if requests is not None else 0
    bits = users.get((phase, arm), 0)
    estimate, variance = distinct_users(bits, USER_MAP_BITS) if bits else (0.0, 0.0)
    return estimate + keyless, variance


def sample_ratio(
    sums: Mapping[MeasureKey, Sums],
    users: Users,
    experiment: str,
    phase: int,
    arms: tuple[str, str],
    share: float,
) -> tuple[float, tuple[float, float]]:
    """The SRM p-value of a phase on units (users where there are users, requests where
    there are none) and the units per arm (control, treatment)."""
    (control, var_c), (treatment, var_t) = (
        units(sums, users, experiment, phase, arm) for arm in arms
    )
    p = sequential_srm([control, treatment], [1 - share, share], [var_c, var_t])
    return p, (control, treatment)
