"""Sufficient statistics of one arm, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from abgate.config.errors import AbgateError
from abgate.config.fields import shown
from abgate.control.summary_bounds import MAX_MAGNITUDE, MAX_N, MIN_STD

Alternative = Literal["two-sided", "greater", "less"]  # about treatment (b) minus control (a)


class StatsInputError(AbgateError, ValueError):
    """Input the statistics cannot be computed from; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# Beyond the bounds (control/summary_bounds.py) the arithmetic of the tests overflows or
# loses every digit: refused up front, naming the field, rather than failing inside.


def _finite(field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StatsInputError(field, f"expected a finite number, got {shown(value)}")
    if abs(value) > MAX_MAGNITUDE:
        raise StatsInputError(field, f"must be within ±{MAX_MAGNITUDE:g}, got {shown(value)}")
    return float(value)


def _count(field: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_N:
        raise StatsInputError(
            field, f"expected a whole number from {low} to {MAX_N:,}, got {shown(value)}"
        )
    return value


@dataclass(frozen=True, slots=True)
class SampleMean:
    """n observations with their mean and (sample, n-1) variance."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, field: str, n: object, mean: object, std: object) -> SampleMean:
        count = _count(f"{field}.n", n, 2)
        std_value = _finite(f"{field}.std", std)  # type: ignore[arg-type]
        if std_value < 0:
            raise StatsInputError(f"{field}.std", f"must not be negative, got {shown(std)}")
        if 0 < std_value < MIN_STD:
            raise StatsInputError(f"{field}.std", f"0, or at least {MIN_STD:g}, got {shown(std)}")
        return cls(count, _finite(f"{field}.mean", mean), std_value**2)  # type: ignore[arg-type]

    @classmethod
    def from_sums(cls, count: int, total: float, total_sq: float) -> SampleMean:
        """From count, sum and sum of squares, as the proxy accumulates them."""
        if count < 1:
            raise StatsInputError("n", "no observations")
        mean = total / count
        variance = max(0.0, (total_sq - total * mean) / (count - 1)) if count > 1 else 0.0
        return cls(count, mean, variance)

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)


@dataclass(frozen=True, slots=True)
class Proportion:
    """successes out of n."""

    n: int
    successes: int

    @classmethod
    def of(cls, field: str, n: object, successes: object) -> Proportion:
        n = _count(f"{field}.n", n, 1)
        successes = _count(f"{field}.successes", successes, 0)
        if successes > n:
            raise StatsInputError(
                f"{field}.successes", f"more successes ({successes}) than observations ({n})"
            )
        return cls(n, successes)

    @property
    def rate(self) -> float:
        return self.successes / self.n

    def as_mean(self, design: float = 1.0) -> SampleMean:
        """As a mean of 0/1 values; `design` inflates the variance (clustered users)."""
        p = self.rate
        variance = p * (1 - p) * self.n / (self.n - 1) if self.n > 1 else 0.0
        return SampleMean(self.n, p, variance * design)
