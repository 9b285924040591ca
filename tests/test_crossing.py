"""Issue 26 item 5: a harm test sized for its chance of crossing by n
(control/stats/crossing.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from abgate.control.stats.crossing import boundary, crossing_probability, crossing_z, last_look_z
from abgate.control.stats.sequential import sequential_sample_size

# m = n rho^2 where N* is the planned n: about 14.5 at a harm test's alpha 0.05 / 20
M, ALPHA = 14.5, 0.05 / 20


def _drift(z: float, m: float = M, ratio: float = 1.0) -> float:
    return (ratio * float(boundary(m, ALPHA)) + z * math.sqrt(m)) / m


@pytest.mark.parametrize(("looks", "ratio"), [(10, 1.0), (50, 1.0), (50, 0.8)])
def test_the_crossing_probability_is_the_simulated_share(looks: int, ratio: float) -> None:
    drift = _drift(0.84, ratio=ratio)
    rng = np.random.default_rng(26)
    steps = rng.normal(drift * M / looks, math.sqrt(M / looks), (40_000, looks))
    sums = np.cumsum(steps, axis=1)
    times = M * np.arange(1, looks + 1) / looks
    simulated = float((sums >= ratio * boundary(times, ALPHA)).any(axis=1).mean())
    assert crossing_probability(drift, M, ratio, ALPHA, looks) == pytest.approx(
        simulated, abs=0.008
    )  # 40,000 runs: 0.002 of noise


def test_earlier_looks_add_power_to_the_last_one() -> None:
    last = float(special.ndtr(last_look_z(_drift(0.84), M, 1.0, ALPHA)))
    assert last == pytest.approx(0.8, abs=0.001)
    crossed = crossing_probability(_drift(0.84), M, 1.0, ALPHA)
    assert 0.83 < crossed < 0.86
    assert crossing_probability(_drift(0.84), M, 1.0, ALPHA, looks=1) == pytest.approx(last)


def test_crossing_z_gives_the_planned_power_by_n() -> None:
    z = crossing_z(ALPHA, 0.8, M, 1.0)
    assert z < float(special.ndtri(0.8))
    assert crossing_probability(_drift(z), M, 1.0, ALPHA) == pytest.approx(0.8, abs=0.002)


def test_an_anytime_size_is_smaller_and_a_narrower_null_smaller_still() -> None:
    # a 20% rate 2 points worse at a 5% split, alpha 0.05 / 16
    kwargs = {"share": 0.05, "alpha": 0.05 / 16, "tuning": 200_000.0}
    last = sequential_sample_size(0.02, 0.16, 0.1476, **kwargs)  # type: ignore[arg-type]
    anytime = sequential_sample_size(0.02, 0.16, 0.1476, anytime=True, **kwargs)  # type: ignore[arg-type]
    assert 0.8 * sum(last) < sum(anytime) < 0.97 * sum(last)
    narrower = sequential_sample_size(
        0.02,
        0.16,
        0.1476,
        null_variances=(0.16, 0.12),
        **kwargs,  # type: ignore[arg-type]
    )
    assert sum(narrower) < sum(last)
