"""Statistics for rollout decisions: pure functions of sufficient statistics, no I/O.

Like GrowthBook's gbstats: inputs are frozen summaries (`SampleMean`, `Proportion`), outputs
are result objects; scipy does the distributions. Every result is finite or the input is
refused with `StatsInputError` naming the field.
"""

from abgate.control.stats.checks import holm, srm
from abgate.control.stats.frequentist import TestResult, fisher_exact, two_proportion, welch_t
from abgate.control.stats.models import Proportion, SampleMean, StatsInputError
from abgate.control.stats.power import (
    mean_power,
    mean_sample_size,
    proportion_power,
    proportion_sample_size,
)
from abgate.control.stats.sequential import sequential_test

__all__ = [
    "Proportion",
    "SampleMean",
    "StatsInputError",
    "TestResult",
    "fisher_exact",
    "holm",
    "mean_power",
    "mean_sample_size",
    "proportion_power",
    "proportion_sample_size",
    "sequential_test",
    "srm",
    "two_proportion",
    "welch_t",
]
