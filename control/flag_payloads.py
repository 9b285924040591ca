"""The flag endpoints' payloads (control/flags_api.py): each request body and answer
declared once (control/payloads.py)."""

from __future__ import annotations

from dataclasses import asdict
from decimal import Decimal
from typing import Annotated, Any

from pydantic import ConfigDict, Field, WithJsonSchema
from pydantic.functional_validators import PlainValidator

from abgate.config.fields import parse_percentage, shown
from abgate.control.payloads import Answer, Body, Expected, refuse
from abgate.state.flags import Flag, Instance

MAX_VERSION = 2**63 - 1  # Redis's integers
ROLLBACK_TIMEOUT = 10.0


def _basis_points(value: Any) -> int:
    """A percentage as the API takes it, in basis points: decided on the digits as written
    (the body is read with Decimal numbers)."""
    if isinstance(value, Decimal) and decimals(value) > 2:
        # Arithmetic in Decimal's default context would round 10.000000000000000000000000000001
        # to 10 and 1e-999999999 to 0 first.
        raise refuse(f"at most two decimals (0.01% steps), got {value}")
    problems: list[str] = []
    basis_points = parse_percentage(value, problems.append)
    if basis_points is None:
        raise refuse(problems[0])
    return basis_points


def decimals(value: Decimal) -> int:
    """How many decimal places `value` has as written, trailing zeros aside."""
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int) or not any(digits):
        return 0
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing))


def _version(value: Any) -> int:
    # A whole number may be written 3.0 (JSON Schema's integer says so too); 1e308 is whole
    # too, and beyond any version (Decimal's `% 1` would raise on it).
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value()
    )
    if not whole or not 1 <= value <= MAX_VERSION:
        got = f"the string {shown(value)}" if isinstance(value, str) else shown(value)
        raise refuse(
            f"expected the flag version (a whole number from 1 to {MAX_VERSION}) "
            f"the write is based on, got {got}"
        )
    return int(value)


PERCENTAGE_SCHEMA = {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01}
BasisPoints = Annotated[
    int,
    PlainValidator(_basis_points),
    WithJsonSchema(PERCENTAGE_SCHEMA),
    Expected("a number from 0 to 100", missing="required (a number from 0 to 100)"),
]
VERSION_SCHEMA = WithJsonSchema(
    {
        "type": "integer",
        "minimum": 1,
        "description": "compare-and-set: the flag version this write is based on",
    }
)
Version = Annotated[int, PlainValidator(_version), VERSION_SCHEMA]
# None only as the default (no compare-and-set): a null in the body is refused.
OptionalVersion = Annotated[int | None, PlainValidator(_version), VERSION_SCHEMA]
Reason = Annotated[str, Field(max_length=1000), Expected("a string of at most 1000 characters")]


class SetFlagBody(Body):
    percentage: BasisPoints
    reason: Reason = ""
    expected_version: OptionalVersion = None


class SetFlagsBody(Body):
    """Several flags in one atomic write: all or nothing."""

    flags: Annotated[
        dict[str, BasisPoints],
        Field(min_length=1),
        Expected("an object of flag name to percentage"),
    ]
    reason: Reason = ""
    expected_versions: dict[str, Version] | None = None


class RollbackBody(Body):
    experiments: Annotated[
        list[str],
        Field(
            min_length=1,
            description="experiment names, or groups the config defines (control.groups); "
            "left out: every experiment",
        ),
        Expected(
            "a non-empty list of experiment or group names "
            "(leave the field out to roll back every experiment)"
        ),
    ] = Field(default_factory=list)
    reason: Reason = "emergency rollback"
    timeout: Annotated[
        float, Field(gt=0, le=300), Expected("seconds, more than 0 and at most 300")
    ] = ROLLBACK_TIMEOUT


class _FlagFields(Answer):
    name: str
    percentage: Annotated[float, WithJsonSchema(PERCENTAGE_SCHEMA)]
    version: Annotated[int, Field(ge=1)]
    updated_at: float
    updated_by: str
    reason: str


class FlagAnswer(_FlagFields):
    phase: Annotated[int, Field(ge=1, description="the version that set this percentage")]


class FlagsAnswer(Answer):
    flags: list[FlagAnswer]

    @classmethod
    def of(cls, flags: list[Flag]) -> FlagsAnswer:
        return cls(flags=[FlagAnswer.model_validate(flag) for flag in flags])


class FlagHistoryEntry(_FlagFields):
    """A flag as it was written; what the store keeps beside it (Redis: the entry's id)
    passes through."""

    model_config = ConfigDict(extra="allow")
    phase: Annotated[int, Field(ge=1)] | None = Field(
        default=None, exclude_if=lambda phase: phase is None
    )


class FlagHistoryAnswer(Answer):
    name: str
    history: list[FlagHistoryEntry]


class InstanceAnswer(Answer):
    id: str
    address: str
    pid: int
    started_at: float
    heartbeat_at: float
    applied: dict[str, int]
    converged: bool
    breakers: dict[str, str]

    @classmethod
    def of(cls, instance: Instance, flags: list[Flag]) -> InstanceAnswer:
        return cls.model_validate({**asdict(instance), "converged": instance.converged(flags)})


class InstancesAnswer(Answer):
    instances: list[InstanceAnswer]


class RollbackAnswer(Answer):
    flags: list[FlagAnswer]
    elapsed_ms: float
    converged: bool | None = Field(
        description="null: nobody can tell (the instance registry could not be read)"
    )
    convergence_unknown: str | None = Field(
        default=None, exclude_if=lambda why: why is None, description="why converged is null"
    )
    instances: list[InstanceAnswer]
    laggards: list[str]


class ConflictAnswer(Answer):
    """Another writer changed the flag; nothing was written."""

    error: str
    current: FlagAnswer
