"""One estimate across phases: inverse-variance weighting of each phase's difference.

Pooling arms across phases is biased whenever the split changed between them (Simpson's
paradox: a treatment better in every phase can look worse pooled, because its traffic sits
in different phases than the control's). Weighting each phase's own difference by its
precision keeps every comparison within a phase. Fixed-horizon and descriptive: the gates
decide on the current phase's sequential test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import special

from abgate.control.stats.models import SampleMean, StatsInputError


@dataclass(frozen=True, slots=True)
class Combined:
    effect: float  # treatment minus control
    ci: tuple[float, float]
    p_value: float
    phases: int  # how many phases had data in both arms


def stratified_difference(
    strata: Sequence[tuple[SampleMean, SampleMean]], alpha: float = 0.05
) -> Combined:
    """(control, treatment) per phase -> the precision-weighted difference."""
    weights = []
    differences = []
    for a, b in strata:
        variance = a.variance / a.n + b.variance / b.n
        if variance > 0:
            weights.append(1 / variance)
            differences.append(b.mean - a.mean)
    if not weights:
        raise StatsInputError("phases", "no phase has variation in both arms")
    total = sum(weights)
    effect = sum(w * d for w, d in zip(weights, differences, strict=True)) / total
    se = math.sqrt(1 / total)
    z = float(-special.ndtri(alpha / 2))
    p = float(min(1.0, 2 * special.ndtr(-abs(effect) / se)))
    return Combined(effect, (effect - z * se, effect + z * se), p, len(weights))
