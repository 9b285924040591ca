"""Issue 26 item 6: the confidence sequence tuned to the stage's planned n (gbstats' N*)."""

from __future__ import annotations

import pytest

from abgate.control.stats.sequential import TUNING
from abgate.control.stats.tuning import SizedTest, on_grid, size_at, tuned_size
from benchmarks.rollout_sim import Arm
from benchmarks.stage_sim import stage_lengths, tuned

# A 2-point loss on a 20% rate at a 5% split, at a harm test's alpha (0.05 / 4 / 4).
TESTS = [SizedTest(0.02, (0.16, 0.1476), 0.05 / 16, (0.16, 0.16), anytime=True)]


def test_n_star_is_the_planned_n_and_the_size_is_smaller_for_it() -> None:
    default = size_at(TESTS, 0.05, 0.8, TUNING)
    need, n_star, binding = tuned_size(TESTS, 0.05, 0.8)
    assert binding == 0
    assert n_star == on_grid(n_star)
    assert n_star != TUNING
    # the fixed point: N* is the planned n, within the grid's quarter doubling
    assert sum(need.values()) == pytest.approx(n_star, rel=0.2)
    assert size_at(TESTS, 0.05, 0.8, n_star) == need
    assert sum(need.values()) < 0.95 * sum(default.values())


def test_on_grid_rounds_to_a_quarter_doubling() -> None:
    assert on_grid(4096.0) == 4096.0
    assert on_grid(4300.0) == 4096.0
    assert on_grid(10.0) == 100.0


def test_untuned_is_the_gbstats_default() -> None:
    with tuned(False):
        assert tuned_size(TESTS, 0.05, 0.8) == (size_at(TESTS, 0.05, 0.8, TUNING), TUNING, 0)


def test_a_stage_continues_on_fewer_samples_tuned_than_untuned() -> None:
    # Seeded A/A first stages at 5% (benchmarks/stage_sim.py runs 100 a row): about 204,000
    # requests with N* = 5,000, fewer with N* at the planned n, and no false rollback.
    with tuned(False):
        before, rolled_before, _ = stage_lengths(Arm(), runs=2, seed=5)
    with tuned(True):
        after, rolled_after, _ = stage_lengths(Arm(), runs=2, seed=5)
    assert len(before) == len(after) == 2
    assert max(after) < 0.95 * min(before)
    assert rolled_before == rolled_after == 0.0


def test_the_binding_test_is_the_one_with_the_most_samples() -> None:
    # a guardrail at a 5% split (errors 1%, margin 1 point): non-inferiority of an equal
    # treatment at alpha 0.05, read at n; the harm test of 3% errors at 0.05 / 20, anytime
    tests = [
        SizedTest(0.01, (0.0099, 0.0099), 0.05, (0.0099, 0.0196)),
        SizedTest(0.01, (0.0099, 0.0291), 0.05 / 20, (0.0099, 0.0196), anytime=True),
    ]
    need, n_star, binding = tuned_size(tests, 0.05, 0.8)
    assert binding == 1
    assert need == size_at(tests[1:], 0.05, 0.8, n_star)
    assert sum(size_at(tests[:1], 0.05, 0.8, n_star).values()) < sum(need.values())


def test_a_metric_sized_twice_is_tested_at_the_n_star_of_its_larger_size() -> None:
    from abgate.control.rollout.sizing import Sized, Sizing, TooFewToSize, tunings

    sized: list[Sizing] = [
        Sized("error", 0.01, 900, 100, 1024.0),
        Sized("error", 0.01, 9000, 1000, 8192.0),
        TooFewToSize("latency", 10, 10),
    ]
    assert tunings(sized) == {"error": 8192.0}
