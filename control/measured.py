"""The measurement store's per-cluster sums, gathered per (phase, arm, metric) for the tests.

The store keeps sums per cluster of users (state/measurements.py); the statistics want each
arm's metric as one `ClusteredSums` (control/stats/clusters.py). One pass over what a read
returned. A phase's arms and its sample-ratio check (`PhaseArms`) are made here once, by
the same function for the statistics worker (each phase of its report) and the rollout
controller (the stage the gates decide on); the check itself is `SampleRatio.check`, the
one the gates run on a stage's units."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from abgate.config.metrics_catalogue import ERROR_METRIC
from abgate.control.stats import cuped
from abgate.control.stats.checks import SRM_THRESHOLD, distinct_users, sequential_srm
from abgate.control.stats.clusters import ClusteredSums
from abgate.state.measurements import (
    CROSS,
    PRE,
    UNCLUSTERED,
    USER_MAP_BITS,
    MeasureKey,
    MeasurementStore,
    Phase,
    Sums,
)

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

    y, x, xy = both(metric), both(metric + PRE), both(metric + CROSS)
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


Counted = tuple[float, float]  # units (distinct users and keyless requests), their variance


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """The sample-ratio check of one phase (or stage): the units each arm was randomised in
    against the treatment's share the split asked for, with the always-valid p-value
    (control/stats/checks.py::sequential_srm; 1.0 while nothing was counted)."""

    control: Counted
    treatment: Counted
    share: float
    p_value: float

    @classmethod
    def check(cls, control: Counted, treatment: Counted, share: float) -> SampleRatio:
        counts = [control[0], treatment[0]]
        variances = [control[1], treatment[1]]
        p = sequential_srm(counts, [1 - share, share], variances) if sum(counts) else 1.0
        return cls(control, treatment, share, p)

    @property
    def flagged(self) -> bool:
        return self.p_value < SRM_THRESHOLD

    @property
    def units(self) -> tuple[Counted, Counted]:
        return self.control, self.treatment


@dataclass(frozen=True, slots=True)
class PhaseArms:
    """One phase of one experiment as one read of the store saw it: each arm's metrics and
    the sample-ratio check of the split."""

    phase: int
    control: dict[str, ClusteredSums]  # metric -> sums
    treatment: dict[str, ClusteredSums]
    srm: SampleRatio

    @property
    def requests(self) -> tuple[int, int]:
        """Requests per arm (every request counts once in `error`), control first."""
        control, treatment = (
            arm.get(ERROR_METRIC, EMPTY) for arm in (self.control, self.treatment)
        )
        return control.count, treatment.count


def phase_arms(
    arms: Mapping[ArmKey, ClusteredSums],
    sums: Mapping[MeasureKey, Sums],
    users: Users,
    experiment: str,
    phase: int,
    names: tuple[str, str],
    share: float,
) -> PhaseArms:
    """A phase's arms (`names`: control, treatment) from `by_arm(sums)` and the same read's
    distinct-users counts, with its SRM check at the treatment's `share` on units (users
    where there are users, requests where there are none)."""
    control, treatment = names
    return PhaseArms(
        phase,
        of_phase(arms, phase, control),
        of_phase(arms, phase, treatment),
        SampleRatio.check(
            units(sums, users, experiment, phase, control),
            units(sums, users, experiment, phase, treatment),
            share,
        ),
    )


@dataclass(frozen=True, slots=True)
class Read:
    """One read of an experiment's measurements: its phases, sums and distinct users, and
    their per-arm sums (`by_arm`), as of `at` (the loop's clock)."""

    at: float
    phases: list[Phase]
    sums: Mapping[MeasureKey, Sums]
    users: Users
    arms: dict[ArmKey, ClusteredSums]


class Reads:
    """The one reader of the measurement store for the statistics worker and the rollout
    controller. A read is shared with any caller that accepts it at its age (`max_age`: the
    worker its interval, the controller its tick), and reads in flight are joined: the
    report, the gauges and the gates of one tick judge the same numbers, and the store is
    read once for them."""

    def __init__(self, store: MeasurementStore) -> None:
        self.store = store
        self._last: dict[str, Read] = {}
        self._reading: dict[str, asyncio.Future[Read]] = {}

    async def read(self, experiment: str, max_age: float = 0.0) -> Read:
        loop = asyncio.get_running_loop()
        last = self._last.get(experiment)
        if last is not None and loop.time() - last.at < max_age:
            return last
        reading = self._reading.get(experiment)
        if reading is None:
            reading = self._reading[experiment] = loop.create_future()
            try:
                at = loop.time()
                phases, sums = await self.store.read(experiment)
                users = await self.store.users(experiment)
                last = self._last[experiment] = Read(at, phases, sums, users, by_arm(sums))
                reading.set_result(last)
            except asyncio.CancelledError:
                reading.cancel()
                raise
            except Exception as exc:  # the joined readers see the same failure
                reading.set_exception(exc)
                reading.exception()  # retrieved: no "never retrieved" when none joined
                raise
            finally:
                del self._reading[experiment]
            return last
        return await asyncio.shield(reading)
