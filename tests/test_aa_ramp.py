"""A/A over the whole ramp with sticky users whose requests are alike and whose activity is
skewed (issue 26, "done when"): small seeded versions of benchmarks/aa_ramp.py. The full
table, at 3,000 and 200,000 requests an hour, is in benchmarks/RESULTS.md."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from abgate.control.stats.clusters import ClusteredSums
from benchmarks.aa_ramp import EVEN, HEAVY, SKEWED, Phase, Population, Traffic, cell, simulate

# 200,000 requests an hour from 200,000 users, looked at every minute, for a day at most
BUSY = Traffic("busy", 200_000.0, 200_000, 60.0, 24, 0.25)
# 3,000 requests an hour, looked at every five minutes, for two days
QUIET = Traffic("quiet", 3_000.0, 20_000, 300.0, 48, 0.5)


def test_aa_rollouts_with_skewed_users_complete_the_whole_ramp_without_a_rollback() -> None:
    result = cell(BUSY, 0.20, SKEWED, runs=8, seed=2691)
    assert result.rolled_back == 0
    # the whole ramp, the holdout at 100% included, was judged and passed
    assert result.completed >= 0.75, result


def test_aa_rollouts_with_even_users_at_a_low_base_rate_are_not_rolled_back() -> None:
    result = cell(BUSY, 0.02, EVEN, runs=6, seed=2692)
    assert result.rolled_back == 0
    assert result.completed >= 0.75, result


def test_heavy_tailed_users_at_low_traffic_are_held_never_rolled_back() -> None:
    """A few users make much of the traffic: the stage's effective sample is small and it
    holds (the controller escalates it with its numbers) rather than deciding on noise."""
    result = cell(QUIET, 0.20, HEAVY, runs=3, seed=2693)
    assert result.rolled_back == 0


def test_the_same_users_catch_a_real_loss() -> None:
    """The simulation can fail: with the treatment converting 8 points less, the clustered
    gates roll it back at the first stage."""
    rng = np.random.default_rng(2694)
    ends = [simulate(rng, SKEWED, BUSY, 0.20, loss=0.08) for _ in range(4)]
    assert [e.end for e in ends] == ["rolled_back"] * 4
    assert all(e.stage == 0 for e in ends)


def test_the_simulation_sums_as_the_shipped_path_does() -> None:
    """The table's fast path (sums built from the arrays) equals the store's path
    (control/measured.py `by_arm`) when no covariate is posted."""
    rng = np.random.default_rng(2695)
    population = Population(rng, SKEWED, 5_000, 0.2)
    phase = Phase(population.size)
    who = population.requests(rng, 20_000)
    arm = (population.draw[who] < 2_500).astype(np.int64)
    for metric in range(3):
        phase.add(metric, arm, population.cluster[who], rng.random(who.size))
    for index, through_store in enumerate(phase.by_store()):
        direct = phase.sums(index)
        assert set(through_store) == set(direct) == {"error", "latency", "converted"}
        for name, sums in through_store.items():
            for field in fields(ClusteredSums):
                expected = getattr(direct[name], field.name)
                assert getattr(sums, field.name) == pytest.approx(expected, rel=1e-12)
