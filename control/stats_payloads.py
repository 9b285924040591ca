"""The statistics endpoints' request bodies (control/stats_api.py), declared once
(control/payloads.py): a test on inline summaries (Welch's t, two proportions) or on live
data, and a sample size from Cohen's d or from a baseline rate.

A summary's bounds (n from 2, |mean| and std up to 1e100, std 0 or at least 1e-50) are the
statistics package's own checks (control/stats/models.py, each naming the field); the
document states them from the same constants."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from abgate.control.evidence_payloads import EvidenceAnswer
from abgate.control.payloads import Answer, Body, Expected, whole
from abgate.control.summary_bounds import MAX_MAGNITUDE, MAX_N, MIN_STD

ALPHA_RANGE = (1e-10, 0.5)  # beyond: nothing a rollout would use, and numerically fragile
MAX_POWER = 1 - 1e-9  # beyond: no finite sample size


Alpha = Annotated[
    float,
    Field(gt=ALPHA_RANGE[0], lt=ALPHA_RANGE[1]),
    Expected("a number between 1e-10 and 0.5", got=True),
]
Share = Annotated[float, Field(gt=0, lt=1), Expected("a number between 0 and 1", got=True)]
Alternative = Annotated[
    Literal["two-sided", "greater", "less"], Expected("one of two-sided, greater, less")
]
Sequential = Annotated[bool, Expected("true or false")]


Count2 = Annotated[
    int,
    BeforeValidator(whole),
    Field(json_schema_extra={"minimum": 2, "maximum": MAX_N}),
    Expected(f"a whole number from 2 to {MAX_N:,}", got=True),
]
Count1 = Annotated[
    int,
    BeforeValidator(whole),
    Field(json_schema_extra={"minimum": 1, "maximum": MAX_N}),
    Expected(f"a whole number from 1 to {MAX_N:,}", got=True),
]
Count0 = Annotated[
    int,
    BeforeValidator(whole),
    Field(json_schema_extra={"minimum": 0, "maximum": MAX_N}),
    Expected(f"a whole number from 0 to {MAX_N:,}", got=True),
]


class MeanSummary(Body):
    n: Count2
    mean: Annotated[
        float, Field(json_schema_extra={"minimum": -MAX_MAGNITUDE, "maximum": MAX_MAGNITUDE})
    ]
    std: Annotated[
        float,
        Field(
            json_schema_extra={
                "anyOf": [{"const": 0}, {"minimum": MIN_STD, "maximum": MAX_MAGNITUDE}]
            }
        ),
    ]


class RateSummary(Body):
    n: Count1
    successes: Count0


class _TestOptions(Body):
    alpha: Alpha = 0.05
    alternative: Alternative = "two-sided"
    sequential: Annotated[
        Sequential, Field(description="the always-valid test the gates use (two-sided only)")
    ] = False


class WelchTestBody(_TestOptions):
    test: Literal["welch_t"]
    a: Annotated[MeanSummary, Expected("an object with n, mean, std")]
    b: Annotated[MeanSummary, Expected("an object with n, mean, std")]


class ProportionTestBody(_TestOptions):
    test: Literal["two_proportion"]
    a: Annotated[RateSummary, Expected("an object with n, successes")]
    b: Annotated[RateSummary, Expected("an object with n, successes")]


class LiveTestBody(Body):
    """Live data: the current experiment and its plan's primary metric unless named."""

    experiment: str | None = None
    metric: str | None = None
    cohort_a: str | None = None
    cohort_b: str | None = None
    alpha: Alpha | None = None
    sequential: Sequential = True


Power = Annotated[
    float,
    Field(gt=0, lt=MAX_POWER, description="above alpha"),
    Expected(f"a number above alpha and below {MAX_POWER!r}", got=True),
]


class SizeOptions(Body):
    alpha: Alpha = 0.05
    power: Power = 0.8
    treatment_share: Annotated[
        Share, Field(description="the treatment's share of traffic (a rollout stage)")
    ] = 0.5


NOT_ZERO = {"not": {"const": 0}}
EffectSize = Annotated[
    float,
    Field(gt=-1000, lt=1000, json_schema_extra=NOT_ZERO),
    Expected("a number between -1000 and 1000", got=True),
]
RateEffect = Annotated[
    float,
    Field(gt=-1, lt=1, json_schema_extra=NOT_ZERO),
    Expected("a number between -1 and 1", got=True),
]


class MeansSampleSizeBody(SizeOptions):
    """Cohen's d, two-sided Welch/Student t."""

    effect_size: EffectSize


class RatesSampleSizeBody(SizeOptions):
    """A baseline rate and the minimum detectable effect (Cohen's h, two-sided z)."""

    baseline_rate: Share
    minimum_detectable_effect: RateEffect


class FixedSampleSize(Answer):
    per_arm: int
    total: int


class SequentialSampleSize(Answer):
    """The size the gates' sequential test needs: the one to plan a stage by."""

    control: int
    treatment: int
    total: int
    treatment_share: float


class SampleSizeAnswer(Answer):
    minimum_sample_size: int = Field(description="per arm, fixed horizon, equal arms")
    minimum_sample_size_unit: str
    sample_size: FixedSampleSize
    sequential: SequentialSampleSize
    power: float
    alpha: float
    kind: str = Field(
        serialization_alias="for", description="means (Cohen's d) or rates (Cohen's h)"
    )


class TestEffect(Answer):
    absolute: float = Field(description="b - a")
    relative: float | None = Field(description="to a's mean; null where it is 0")


class CohortCounts(Answer):
    a: int
    b: int


class _TestAnswer(Answer):
    """What every test answers: inline summaries or live data."""

    test: str
    p_value: float
    confidence_level: float = Field(
        description="1 - p_value: the highest level at which the test's interval excludes "
        "no difference (Optimizely's 'statistical significance')"
    )
    interval_level: float = Field(description="1 - alpha: the level of ci")
    alpha: float
    significant: bool
    effect: TestEffect
    n: CohortCounts


class TestInterval(Answer):
    absolute: list[float | None] = Field(description="a one-sided test's open end is null")
    relative: list[float | None] | None


class DetectableEffect(Answer):
    """Not the power at the observed effect (a restatement of the p-value): the effect
    these sample sizes detect with 80% power."""

    absolute: float | None = Field(
        description="null where the data have no variance to size it by (see reason)"
    )
    power: float
    reason: str | None = Field(
        default=None,
        exclude_if=lambda reason: reason is None,
        description="why absolute is null",
    )


class TestResultAnswer(_TestAnswer):
    """A test's result (control/stats/frequentist.py's TestResult)."""

    ci: TestInterval


class InlineTestAnswer(TestResultAnswer):
    minimum_detectable_effect: DetectableEffect


class LiveInterval(Answer):
    absolute: list[float] = Field(min_length=2, max_length=2, description="always valid")


class CohortMeans(Answer):
    a: float | None
    b: float | None


class Cohorts(Answer):
    a: str
    b: str


class LiveTestAnswer(_TestAnswer):
    """On the comparison of record (control/evidence.py)."""

    ci: LiveInterval
    sample_size: int = Field(ge=0, description="samples in both arms")
    mean: CohortMeans
    p_value_sequential: float | None
    p_value_fixed: float | None
    power: float | None = Field(description="to detect the plan's minimum effect")
    metric: str
    experiment: str
    phase: int
    type: str
    direction: str
    cohorts: Cohorts
    evidence: EvidenceAnswer
    note: str
