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
from typing import NamedTuple

from abgate.control.stats.models import StatsInputError
from abgate.control.stats.sequential import TUNING, sequential_sample_size

TUNED = True  # False: gbstats' default N* everywhere (before issue 26 item 6; benchmarks)
GRID = 4  # steps of N* per doubling
ROUNDS = 6  # of the fixed-point iteration: it settles in two or three
MIN_TUNING = 100.0


class SizedTest(NamedTuple):
    """One test a size must serve (control/rollout/sizing.py)."""

    effect: float  # the distance from the null the test must show
    variances: tuple[float, float]  # (control's, treatment's) per sample where the truth is
    alpha: float
    # where the null is (the sequence's width; rates' score variance): by default `variances`
    null_variances: tuple[float, float] | None = None
    # acted on at the first look that crosses (a harm test's rollback), so sized for the
    # chance of crossing by n; else read once the samples are there (non-inferiority)
    anytime: bool = False


def on_grid(n: float) -> float:
    """`n` rounded to the grid of N* (a quarter doubling), at least MIN_TUNING."""
    return max(MIN_TUNING, float(2.0 ** (round(GRID * math.log2(max(n, 1.0))) / GRID)))


def sizes_at(
    tests: Sequence[SizedTest], share: float, power: float, tuning: float
) -> list[dict[str, int] | None]:
    """Samples per arm of each test with the sequence tuned to `tuning` (None: a test that
    cannot be sized, as a metric with no spread)."""
    sizes: list[dict[str, int] | None] = []
    for test in tests:
        try:
            n_control, n_treatment = sequential_sample_size(
                test.effect,
                *test.variances,
                share=share,
                power=power,
                alpha=test.alpha,
                tuning=tuning,
                null_variances=test.null_variances,
                anytime=test.anytime,
            )
        except StatsInputError:
            sizes.append(None)
            continue
        sizes.append({"control": n_control, "treatment": n_treatment})
    return sizes


def size_at(
    tests: Sequence[SizedTest], share: float, power: float, tuning: float
) -> dict[str, int]:
    """Samples per arm for every test at once with the sequence tuned to `tuning` (a test
    that cannot be sized is left out)."""
    return _combined(sizes_at(tests, share, power, tuning))[0]


def _combined(sizes: Sequence[dict[str, int] | None]) -> tuple[dict[str, int], int | None]:
    """(the samples every test has enough with, the index of the test that sets them: the
    most samples in all; None when none could be sized)."""
    need = {"control": 2, "treatment": 2}
    for size in sizes:
        if size is not None:
            need = {arm: max(need[arm], size[arm]) for arm in need}
    sized = [(sum(size.values()), index) for index, size in enumerate(sizes) if size]
    return need, max(sized)[1] if sized else None


def tuned_size(
    tests: Sequence[SizedTest], share: float, power: float
) -> tuple[dict[str, int], float, int | None]:
    """(samples per arm, N*, the index of the test that sets the size): the smallest size
    among the N* tried on the way to the fixed point N* = planned n (each size is the one
    its own N* gives)."""
    tuning = TUNING
    need, binding = _combined(sizes_at(tests, share, power, tuning))
    if not TUNED:
        return need, tuning, binding
    best = (sum(need.values()), need, tuning, binding)
    for _ in range(ROUNDS):
        target = on_grid(sum(need.values()))
        if target == tuning:
            break
        tuning = target
        need, binding = _combined(sizes_at(tests, share, power, tuning))
        best = min(best, (sum(need.values()), need, tuning, binding), key=lambda found: found[0])
    return best[1], best[2], best[3]
