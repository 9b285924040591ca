"""Sufficient statistics of one arm, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Alternative = Literal["two-sided", "greater", "less"]  # about treatment (b) minus control (a)


class StatsInputError(ValueError):
    """Input the statistics cannot be computed from; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _finite(field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StatsInputError(field, f"expected a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class SampleMean:
    """n observations with their mean and (sample, n-1) variance."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, field: str, n: object, mean: object, std: object) -> SampleMean:
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise StatsInputError(f"{field}.n", f"need at least 2 observations, got {n!r}")
        std_value = _finite(f"{field}.std", std)  # type: ignore[arg-type]
        if std_value < 0:
            raise StatsInputError(f"{field}.std", f"must not be negative, got {std_value}")
        return cls(n, _finite(f"{field}.mean", mean), std_value ** 2)  # type: ignore[arg-type]

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
        for name, value in (("n", n), ("successes", successes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise StatsInputError(f"{field}.{name}",
                                      f"expected a whole number >= 0, got {value!r}")
        assert isinstance(n, int)
        assert isinstance(successes, int)
        if n < 1:
            raise StatsInputError(f"{field}.n", "need at least 1 observation")
        if successes > n:
            raise StatsInputError(f"{field}.successes",
                                  f"more successes ({successes}) than observations ({n})")
        return cls(n, successes)

    @property
    def rate(self) -> float:
        return self.successes / self.n

    def as_mean(self) -> SampleMean:
        p = self.rate
        return SampleMean(self.n, p, p * (1 - p) * self.n / (self.n - 1) if self.n > 1 else 0.0)
