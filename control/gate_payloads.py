"""A rollout decision's gates and a rollout's history entries, as the rollout endpoints
answer them (control/rollout_api.py), declared once (control/payloads.py).

A gate is its name, status and detail, with what it measured beside them
(control/rollout/gate_numbers.py): a harm test, an SLO's rate against its limit, the
sample-ratio check, the samples against the size needed, or nothing more. A history entry
is what the controller recorded (control/rollout/records.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

from abgate.control.evidence_payloads import ArmCounts
from abgate.control.payloads import Answer

if TYPE_CHECKING:
    from abgate.control.rollout.gates import Gate


def _absent(value: object) -> bool:
    return value is None


class _Gate(Answer):
    name: str
    status: Literal["pass", "fail", "hold", "n/a"]
    detail: str


class PlainGate(_Gate):
    """A gate that measured nothing more than its detail says."""


class _Tested(_Gate):
    p_value: float = Field(description="always valid, one-sided")
    p_value_holm: float = Field(description="adjusted by Holm within the stage's family")
    alpha: float = Field(description="the stage's")


class HarmGate(_Tested):
    """A harm test: the treatment worse than control by `harm` (in the metric's unit,
    signed by its direction), against `margin`."""

    harm: float
    margin: float
    n: ArmCounts


class LimitGate(_Tested):
    """An SLO: the treatment's rate (errors, or requests slower than the latency limit)
    against the plan's limit."""

    rate: float
    limit: float
    n: int = Field(ge=0)


class RatioGate(_Gate):
    """The sample-ratio check, passed at this always-valid p-value."""

    p_value: float


class SizingEntry(Answer):
    """A target metric's size, or why it has none yet (`at_least` control samples)."""

    metric: str
    control: int
    effect: float | None = Field(default=None, exclude_if=_absent)
    treatment: int | None = Field(default=None, exclude_if=_absent)
    tuning: float | None = Field(default=None, exclude_if=_absent)
    at_least: int | None = Field(default=None, exclude_if=_absent)
    binding: Literal["non_inferiority", "harm"] | None = Field(
        default=None,
        exclude_if=_absent,
        description="the test that sets the size: the non-inferiority (or superiority) "
        "test, or the rollback test catching harm",
    )


class UsersReach(Answer):
    """Users per arm (control/rollout/reach.py)."""

    have: dict[str, int]
    needed: dict[str, int]
    new_per_hour: dict[str, float]
    by_max_hold: dict[str, int]
    cannot_finish: bool


class SamplesGate(_Gate):
    """The binding metric's samples per arm against its size; while it holds, each target's
    sizing and the users reached; once passed, each target metric's samples."""

    have: dict[str, int]
    needed: dict[str, int]
    metric: str | None
    sizing: list[SizingEntry] | None = Field(default=None, exclude_if=_absent)
    users: UsersReach | None = Field(default=None, exclude_if=_absent)
    by_metric: dict[str, dict[str, int]] | None = Field(default=None, exclude_if=_absent)


_KINDS: dict[type[BaseModel], str] = {
    HarmGate: "harm",
    LimitGate: "limit",
    RatioGate: "ratio",
    SamplesGate: "samples",
    PlainGate: "plain",
}


def _kind(value: Any) -> str:
    """Which gate `value` is: by its model, or by the fields a gate's numbers bring."""
    if isinstance(value, BaseModel):
        return _KINDS[type(value)]
    for field, kind in (("harm", "harm"), ("rate", "limit"), ("have", "samples")):
        if field in value:
            return kind
    return "ratio" if "p_value" in value else "plain"


GateEntry = Annotated[
    Annotated[HarmGate, Tag("harm")]
    | Annotated[LimitGate, Tag("limit")]
    | Annotated[RatioGate, Tag("ratio")]
    | Annotated[SamplesGate, Tag("samples")]
    | Annotated[PlainGate, Tag("plain")],
    Discriminator(_kind),
]


_GATES: TypeAdapter[list[GateEntry]] = TypeAdapter(list[GateEntry])


def gate_entries(gates: Sequence[Gate]) -> list[GateEntry]:
    return _GATES.validate_python([gate.as_json() for gate in gates])


class HistoryEntry(Answer):
    """One decision or action, as the controller recorded it: an event from Flagger has no
    state, change or stage (absent, not null: an entry is answered as recorded, and one
    recorded by another version keeps what else it held)."""

    model_config = ConfigDict(extra="allow")

    time: float
    experiment: str
    actor: str
    decision: str = Field(description="the verdict, or the action (start, event, load_test)")
    reason: str
    transition: str | None = Field(description="the state it moved to, if it did")
    state: str | None = Field(default=None, description="the rollout's, after it")
    change: str | None = Field(default=None, description="the percentage's change, in words")
    stage: int | None = Field(default=None, description="the stage's index")
    inputs: dict[str, Any] | None = Field(
        description="what it was decided on (the decision with its gates, a load test's "
        "summary, the plan started with, Flagger's event)"
    )
