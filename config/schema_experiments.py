"""The settings of each experiment: its arms, sticky keys, split, fallback, shadow mode and
metrics, each declared once (see `config.settings`). The rollout plan keeps its own reader
(`config.parse_rollout`, also the control API's), called with the experiment."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field, TypeAdapter, ValidationInfo

from abgate.config.fields import (
    Invalid,
    check_header_name,
    check_name,
    check_string,
    parse_percentage,
    shown,
)
from abgate.config.model import (
    BUILT_IN_METRICS,
    Direction,
    JsonPath,
    MetricType,
    WhenMissing,
)
from abgate.config.settings import Section, setting
from abgate.config.values import (
    BOOLEAN,
    NAME,
    Names,
    before,
    checked,
    duration,
    integer,
    refuse,
)

MAX_MATURITY = 30 * 86_400.0  # a month: outcomes later than that are held in memory too long
_JSON_PATH = re.compile(r"^\$((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\])+)$")
_JSON_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


def json_path(text: Any) -> JsonPath | None:
    """`$.a.b[0]` -> ("a", "b", 0): the small JSONPath subset shadow comparison needs."""
    if not isinstance(text, str):
        return None
    match = _JSON_PATH.match(text)
    if match is None:
        return None
    return tuple(name if name else int(index) for name, index in _JSON_STEP.findall(match.group(1)))


def percentage_bp(value: Any) -> int:
    """0..100 with at most two decimals, in basis points."""
    refused: list[str] = []
    basis_points = parse_percentage(value, refused.append)
    if basis_points is None:
        raise Invalid(refused[0])
    return basis_points


def _required_percentage(value: Any) -> int:
    if value is None:
        raise Invalid("required: the treatment arm's starting percentage (0..100)")
    return percentage_bp(value)


PERCENTAGE = checked(percentage_bp)


def _arm_shape(value: Any) -> Any:
    if isinstance(value, str):
        return {"upstream": value}
    if not isinstance(value, dict):
        raise Invalid("required: an upstream name, or {name: ARM, upstream: UPSTREAM}")
    return value


class ArmSection(Section):
    name: Annotated[str | None, checked(check_name, optional=True)] = setting(
        None, "the arm's name", shown="the upstream's"
    )
    upstream: Annotated[str, NAME] = setting(None, "the upstream that serves it", shown="required")

    @property
    def arm_name(self) -> str:
        return self.name or self.upstream


def _apart_from_control(treatment: ArmSection, info: ValidationInfo) -> ArmSection:
    control = info.data.get("control")
    if isinstance(control, ArmSection) and control.arm_name == treatment.arm_name:
        raise refuse(
            f"arm name {shown(treatment.arm_name)} is also the control arm's; name the arms apart"
        )
    return treatment


def _known_upstream(arm: ArmSection, info: ValidationInfo) -> ArmSection:
    """Its upstream is declared in the file (reported at the arm, whichever form it has)."""
    names = info.context
    assert isinstance(names, Names)
    if arm.upstream not in names.upstreams:
        raise refuse(f"unknown upstream {shown(arm.upstream)}")
    return arm


Arm = Annotated[ArmSection, before(_arm_shape), AfterValidator(_known_upstream)]


_WRITTEN_ALONE = object()  # `client_ip` as a list item: no YAML mapping can say it


def _client_ip(value: Any) -> bool:
    if value is not _WRITTEN_ALONE:  # {client_ip: ...}: it takes no name
        raise Invalid(StickyItem.unknown_key)
    return True


def _sticky_shape(value: Any) -> Any:
    if value == "client_ip":
        return {"client_ip": _WRITTEN_ALONE}
    if not isinstance(value, dict) or len(value) != 1:
        raise Invalid("expected one of {header: NAME}, {cookie: NAME}, {query: NAME} or client_ip")
    ((source, name),) = value.items()
    if name is None and source in ("header", "cookie", "query"):  # `- header:`, name forgotten
        raise Invalid(f"{{{source}: }} names no {source}: expected {{{source}: NAME}}")
    return value


class StickyItem(Section):
    """One source of the sticky key: `{header: NAME}`, `{cookie: NAME}`, `{query: NAME}` or
    `client_ip`; exactly one (`_sticky_shape`)."""

    unknown_key: ClassVar[str] = (
        "unknown sticky key source (expected header, cookie, query or client_ip)"
    )
    header: Annotated[str | None, checked(check_header_name, optional=True)] = setting(
        None, "`{header: NAME}`: the key is this request header's value"
    )
    cookie: Annotated[str | None, checked(check_string, optional=True)] = setting(
        None, "`{cookie: NAME}`: this cookie's"
    )
    query: Annotated[str | None, checked(check_string, optional=True)] = setting(
        None, "`{query: NAME}`: this query parameter's"
    )
    # Not `setting`: its default is not validated (no YAML can write it).
    client_ip: Annotated[bool, checked(_client_ip)] = Field(
        False,
        json_schema_extra={"shown": "written alone"},
        description="`- client_ip` (a list item alone; `{client_ip: ...}` is refused): the "
        "key is the address of the connection's peer, never `X-Forwarded-For`; behind a load "
        "balancer or another proxy that is the proxy's address, the same for every user (one "
        "arm)",
    )


def _sticky_list(value: Any) -> Any:
    if not isinstance(value, list):
        raise Invalid("expected a list such as [{header: X-User-Id}, client_ip]")
    return value


def _when_missing(value: Any) -> WhenMissing:
    choices: tuple[WhenMissing, ...] = ("random", "control", "client_ip")
    if value not in choices:
        raise Invalid(f"expected one of {', '.join(choices)}, got {shown(value)}")
    return value  # type: ignore[no-any-return]


def _compare(value: Any) -> Any:
    if not isinstance(value, list):
        raise Invalid("expected a list of JSON paths such as ['$.decision']")
    return value


def _compared(text: Any) -> tuple[str, JsonPath]:
    parsed = json_path(text)
    if parsed is None:
        raise Invalid(f"not a JSON path like $.decision or $.items[0].id: {shown(text)}")
    return text, parsed


class ShadowSection(Section):
    percentage: Annotated[int, PERCENTAGE] = setting(
        100, "share of control-served requests copied to the treatment upstream"
    )
    compare: Annotated[
        tuple[Annotated[tuple[str, JsonPath], checked(_compared)], ...], before(_compare)
    ] = setting([], 'JSON paths compared between the two answers (`["$.decision"]`)')
    max_in_flight: Annotated[int, integer(low=1, high=100_000)] = setting(
        100, "copies under way at most; beyond, a copy is dropped"
    )


def _metric_type(value: Any) -> MetricType:
    return _one_of(value, ("binary", "continuous"), "")  # type: ignore[return-value]


def _direction(value: Any) -> Direction:
    return _one_of(value, ("higher", "lower"), " (which way is better)")  # type: ignore[return-value]


def _one_of(value: Any, choices: tuple[str, ...], why: str) -> str:
    either = " or ".join(choices)
    if value is None:
        raise Invalid(f"required: {either}{why}")
    if value not in choices:
        raise Invalid(f"must be {either}{why}, got {shown(value)}")
    return str(value)


def _metric_json(value: Any) -> JsonPath | None:
    if value is None:
        return None
    parsed = json_path(value)
    if parsed is None:
        raise Invalid(f"not a JSON path like $.confidence: {shown(value)}")
    return parsed


class MetricSection(Section):
    type: Annotated[MetricType, checked(_metric_type)] = setting(
        None, "`binary` (rates) or `continuous` (means): picks the test", shown="required"
    )
    direction: Annotated[Direction, checked(_direction)] = setting(
        None, "`higher` or `lower`: which way is better", shown="required"
    )
    json_path: Annotated[JsonPath | None, checked(_metric_json)] = setting(
        None, "read from every answer at this JSON path (`$.confidence`)", key="json"
    )
    header: Annotated[str | None, checked(check_header_name, optional=True)] = setting(
        None, "or from this numeric header; neither: outcomes posted to `/api/outcomes`"
    )
    maturity: Annotated[float | None, duration(high=MAX_MATURITY, optional=True)] = setting(
        None,
        "outcomes only: an outcome counts once its decision is this old (docs/rollouts.md)",
    )


def _metric_name(value: Any) -> str:
    name = check_name(value)
    if name in BUILT_IN_METRICS:
        raise Invalid(
            f"{shown(name)} is built in (latency: continuous, lower is better; error: binary, "
            "lower is better)"
        )
    return name


def _metrics_mapping(value: Any) -> Any:
    if not isinstance(value, dict):
        raise Invalid(
            "expected a mapping of metric name to {type: binary|continuous, direction: "
            "higher|lower}, plus json: $.field or header: NAME to read it from each answer"
        )
    return value


Metrics = Annotated[
    dict[Annotated[str, checked(_metric_name)], MetricSection], before(_metrics_mapping)
]


class ExperimentSection(Section):
    control: Arm = setting(
        None,
        "an upstream name (the arm is named after it) or `{name: ARM, upstream: UPSTREAM}`",
        shown="required",
    )
    treatment: Annotated[Arm, AfterValidator(_apart_from_control)] = setting(
        None, "the same, for the treatment arm", shown="required"
    )
    sticky: Annotated[
        tuple[Annotated[StickyItem, before(_sticky_shape)], ...], before(_sticky_list)
    ] = setting([], "e.g. `[{header: X-User-Id}, {cookie: uid}, {query: user}, client_ip]`")
    when_missing: Annotated[WhenMissing, checked(_when_missing)] = setting(
        "random",
        "with no sticky key: `random`, `control` or `client_ip` (the connection's peer, as above)",
    )
    seed: Annotated[str | None, checked(check_string, optional=True)] = setting(
        None, "hash seed (GrowthBook's `seed`)", shown="the name"
    )
    percentage: Annotated[int, checked(_required_percentage)] = setting(
        None,
        "starting treatment share, 0..100 (the live value is the flag; see below)",
        shown="required",
    )
    fallback: Annotated[bool, BOOLEAN] = setting(
        True, "answer treatment failures from the control arm when the request can be resent"
    )
    fallback_on_5xx: Annotated[bool, BOOLEAN] = setting(
        True, "a 5xx from the treatment is such a failure too"
    )
    shadow: ShadowSection | None = setting(
        None, "copies of control-served requests sent to the treatment, answers compared"
    )
    metrics: Metrics = setting(
        {},
        "what the arms are judged on besides the built-in `latency` (continuous, lower is "
        "better) and `error` (binary, lower): `{accuracy: {type: binary, direction: higher}}`",
    )
    rollout: Any = setting(None, "the staged rollout plan (docs/rollouts.md)")


def _experiments_mapping(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid("expected a mapping of experiment name to experiment")
    return value


ExperimentSections = Annotated[
    dict[Annotated[str, NAME], ExperimentSection], before(_experiments_mapping)
]
EXPERIMENTS = TypeAdapter(ExperimentSections)
