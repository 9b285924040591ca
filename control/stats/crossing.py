"""Sizing a sequential test for the chance it crosses by n, not only at n (issue 26 item 5).

The gates look at a harm test every tick and roll back at the first look whose sequence
excludes the null, so its power by the planned n is the chance the estimate crosses the
sequence's boundary at any look up to n. Sized on the last look alone (the estimate clears
the boundary at n with the planned power: `sequential.sequential_sample_size`), the earlier
looks only add: 0.83-0.86 by n for a planned 0.80 over 50 looks (tests/test_crossing.py).
Here the size is the n whose crossing probability is the planned power.

In the units of the sequence's mixing (m = n rho^2, control/stats/sequential.py) the
estimate's running sum is a Brownian motion B(m) with drift theta, and the boundary is
r g(m) with g(m) = sqrt(2 (m + 1) log(sqrt(m + 1) / alpha)), where r is the ratio of the
null's standard deviation (the sequence's width) to the truth's (the estimate's spread).
The crossing probability over LOOKS equally spaced looks is the recursive numerical
integration of group-sequential designs (Armitage, McPherson and Rowe; Jennison and
Turnbull, ch. 19). The sizing keeps its closed form with the power's z replaced by the
`crossing_z` that gives the same n: a function of (alpha, power, m, r) alone, solved once
per point of a grid (cached: some 0.03-0.1 s each, a few dozen at a stage's first sizing,
about 1 s in all) and interpolated in log m and r. Pure functions.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import optimize, special

# The gates look every tick; a stage reaches its planned n over dozens to thousands of
# looks. Sized for 50 equally spaced looks: with 25 the power is about a point lower, with
# every look (continuous) about two points higher (tests/test_crossing.py).
LOOKS = 50
PER_SPREAD = 3  # grid points per standard deviation of one look's step (Simpson: to 1e-4)
SPAN = 6.0  # standard deviations of the sum below the boundary the grid reaches
STEP = 0.5  # of log2 m between the points interpolated
RATIO_STEP = 0.1  # of r between them
MIN_LOG2_M, MAX_LOG2_M = -12.0, 24.0
MIN_RATIO, MAX_RATIO = 0.2, 5.0


def boundary(m: float | np.ndarray, alpha: float) -> np.ndarray:
    """The sequence's boundary for the running sum, in units of m (r = 1)."""
    grown = np.asarray(m, dtype=np.float64) + 1.0
    return np.sqrt(2.0 * grown * np.log(np.sqrt(grown) / alpha))


def crossing_probability(
    drift: float, m: float, ratio: float, alpha: float, looks: int = LOOKS
) -> float:
    """P(B(t) + drift t >= ratio g(t) at some look t = m k / looks, k = 1..looks): the
    share of experiments whose sequence, looked at `looks` times up to m, shows the
    effect."""
    step = m / looks
    spread = math.sqrt(step)
    values = np.zeros(1)  # where the sums not yet across may be, and their mass
    mass = np.ones(1)
    crossed = 0.0
    for look in range(1, looks + 1):
        at = look * step
        limit = ratio * float(boundary(at, alpha))
        centres = values + drift * step
        crossed += float(np.dot(mass, special.ndtr((centres - limit) / spread)))
        low = min(drift * at, limit) - SPAN * math.sqrt(at)
        points = 2 * math.ceil((limit - low) * PER_SPREAD / spread / 2) + 1
        grid = np.linspace(low, limit, points)
        weights = np.full(points, 2.0)  # Simpson's rule
        weights[1::2] = 4.0
        weights[0] = weights[-1] = 1.0
        weights *= (limit - low) / (points - 1) / 3
        density = np.exp(-0.5 * ((grid[:, None] - centres[None, :]) / spread) ** 2) @ mass
        values, mass = grid, density * weights / (spread * math.sqrt(2 * math.pi))
    return min(1.0, crossed)


def last_look_z(drift: float, m: float, ratio: float, alpha: float) -> float:
    """The z of the estimate's margin over the boundary at m: P(above at m) = Phi(z)."""
    return (drift * m - ratio * float(boundary(m, alpha))) / math.sqrt(m)


@functools.lru_cache(maxsize=4096)
def _z_at(alpha: float, power: float, log2_m: float, ratio: float) -> float:
    """`crossing_z` at one point of the grid: the drift whose crossing probability by m is
    `power`, as the z of its last look."""
    m = math.pow(2.0, log2_m)
    z_power = float(special.ndtri(power))

    def drift_at(z: float) -> float:  # the drift whose last look has this z
        return (ratio * float(boundary(m, alpha)) + z * math.sqrt(m)) / m

    def short(z: float) -> float:
        return crossing_probability(drift_at(z), m, ratio, alpha) - power

    high = z_power  # its last look alone has the power: crossing has at least as much
    low = z_power - 0.5  # the earlier looks add 0.02-0.08 to a power of 0.8
    while short(low) > 0 and low > z_power - 8:
        low -= 1.0
    if short(high) <= 0 or short(low) > 0:
        return z_power
    return float(optimize.brentq(short, low, high, xtol=1e-3))


def crossing_z(alpha: float, power: float, m: float, ratio: float) -> float:
    """The z for the closed-form size (`sequential.sequential_sample_size`) that makes
    the crossing probability by m the planned `power`: below the power's own z, since the
    earlier looks add to the last. Interpolated linearly in log2 m and r between the
    points of a grid (it changes by about 0.01 a step there)."""
    log2_m = min(MAX_LOG2_M, max(MIN_LOG2_M, math.log2(m))) / STEP
    ratio = min(MAX_RATIO, max(MIN_RATIO, ratio)) / RATIO_STEP
    m_below, r_below = math.floor(log2_m), math.floor(ratio)
    m_share, r_share = log2_m - m_below, ratio - r_below
    z = 0.0
    for m_index, m_weight in ((m_below, 1 - m_share), (m_below + 1, m_share)):
        for r_index, r_weight in ((r_below, 1 - r_share), (r_below + 1, r_share)):
            if m_weight * r_weight > 0:
                at = _z_at(alpha, power, m_index * STEP, round(r_index * RATIO_STEP, 6))
                z += m_weight * r_weight * at
    return z
