"""The confidence sequence's mixing parameter tuned to the planned n (gbstats' N*).

An asymptotic confidence sequence (control/stats/sequential.py) is tightest around the
sample size it is tuned for, N*; gbstats defaults N* to 5,000 and lets an experiment set it
to its expected size. The gates' stages need 10^4 to 10^6 samples, where a sequence tuned for
5,000 is 1.9-2.25 times the fixed-horizon n (issue 26, item 6). Tuned for the stage's own
planned n it is narrower there: the stage's size is the fixed point n = size(N* = n),
found by iterating from gbstats' default, on a grid of a quarter doubling so that the N*
of a stage does not move with every small change of its variance estimate. Any fixed N*
gives a valid sequence; the gates use the N* of the stage's current sizing (the sizes
depend on the variances, not on the difference the tests look at). Pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence

from abgate.control.stats.models import StatsInputError
from abgate.control.stats.sequential import TUNING, sequential_sample_size

TUNED = True  # False: gbstats' default N* everywhere (before issue 26 item 6; benchmarks)
GRID = 4  # steps of N* per doubling
ROUNDS = 6  # of the fixed-point iteration: it settles in two or three
MIN_TUNING = 100.0

# (effect to detect, (control's variance, treatment's) per sample, alpha) per test
SizedTest = tuple[float, tuple[float, float], float]


def on_grid(n: float) -> float:
    """`n` rounded to the grid of N* (a quarter doubling), at least MIN_TUNING."""
    return max(MIN_TUNING, float(2.0 ** (round(GRID * math.log2(max(n, 1.0))) / GRID)))


def size_at(
    tests: Sequence[SizedTest], share: float, power: float, tuning: float
) -> dict[str, int]:
    """Samples per arm for every test at once with the sequence tuned to `tuning` (a test
    that cannot be sized is left out, as a metric with no spread)."""
    need = {"control": 2, "treatment": 2}
    for effect, (variance_a, variance_b), alpha in tests:
        try:
            n_control, n_treatment = sequential_sample_size(
                effect, variance_a, variance_b, share=share, power=power, alpha=alpha, tuning=tuning
            )
        except StatsInputError:
            continue
        need = {
            "control": max(need["control"], n_control),
            "treatment": max(need["treatment"], n_treatment),
        }
    return need


def tuned_size(
    tests: Sequence[SizedTest], share: float, power: float
) -> tuple[dict[str, int], float]:
    """(samples per arm, N*) of the tests: the smallest size among the N* tried on the way
    to the fixed point N* = planned n (each size is the one its own N* gives)."""
    tuning = TUNING
    need = size_at(tests, share, power, tuning)
    if not TUNED:
        return need, tuning
    best = (sum(need.values()), need, tuning)
    for _ in range(ROUNDS):
        target = on_grid(sum(need.values()))
        if target == tuning:
            break
        tuning = target
        need = size_at(tests, share, power, tuning)
        best = min(best, (sum(need.values()), need, tuning), key=lambda found: found[0])
    return best[1], best[2]
