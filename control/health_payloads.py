"""The health endpoints' answers (control/health_api.py), declared once
(control/payloads.py): the overall status, each component's report and the ML side's list
(an entry of each kind).
A data plane's upstreams are reported as dicts (no pydantic in the data plane) and
validated here, where they are answered."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from abgate.control.payloads import Answer


class ReadyAnswer(Answer):
    ready: bool
    reason: str | None = Field(
        default=None, exclude_if=lambda why: why is None, description="why not ready"
    )


Status = Literal["healthy", "degraded", "unhealthy"]


def _absent(value: object) -> bool:
    return value is None


class Component(Answer):
    status: Status
    reasons: list[str] = Field(description="why not healthy; empty when healthy")


class ActiveCheck(Answer):
    ok: bool
    detail: str
    at: float


class UpstreamHealth(Component):
    breaker: str = Field(description="closed, half_open, open, forced_open or forced_closed")
    error_rate: float = Field(ge=0, le=1, description="over the breaker's window")
    calls_in_window: int = Field(ge=0)
    active_check: ActiveCheck | None = Field(description="the last one; null without checks")
    critical: bool = Field(
        description="users depend on it (a control arm, a route's only upstream)"
    )


class FlagStoreHealth(Component):
    backend: Literal["memory", "redis"]
    state_age_seconds: float | None = Field(
        default=None,
        exclude_if=_absent,
        description="with Redis: the age of the flags routed with (null: never read)",
    )


class InstanceHealth(Answer):
    id: str
    address: str
    heartbeat_age_seconds: float
    converged: bool = Field(description="routes with the flags' current versions")


class InstancesHealth(Component):
    instances: list[InstanceHealth]


class WorkerHealth(Component):
    last_evaluation_age_seconds: float | None
    evaluation_errors: dict[str, int] = Field(description="experiment (or *) -> failures")


class HistoryHealth(Component):
    connected: bool
    buffered: int
    dropped: int
    written: int
    layout: str | None


class ConfigHealth(Component):
    source: str
    loaded_at: float


class ControllerHealth(Component):
    acting: bool = Field(description="holds the controller lease")
    errors: dict[str, int] = Field(description="experiment -> failed ticks")


def _component(description: str) -> Any:
    return Field(default=None, exclude_if=_absent, description=description)


class Components(Answer):
    """Each component this process has; absent: not part of it."""

    data_plane: Component | None = _component("only while the data plane is away")
    upstreams: dict[str, UpstreamHealth] | None = _component("each upstream")
    flag_store: FlagStoreHealth
    instances: InstancesHealth | None = _component("the live proxy instances (Redis)")
    statistics_worker: WorkerHealth | None = _component("the statistics worker")
    history_store: HistoryHealth | None = _component("PostgreSQL's history writers")
    config: ConfigHealth | None = _component("the config file")
    rollout_controller: ControllerHealth | None = _component("the rollout controller")


class MlComponent(Answer):
    """One piece of the ML side, by `kind`."""

    name: str
    kind: str


class MlUpstream(MlComponent):
    kind: Literal["ml_upstream"]
    status: Status | None = Field(description="null: the data plane did not report it")
    reasons: list[str]


class MlBreaker(MlComponent):
    kind: Literal["breaker"]
    status: Status
    state: str = Field(
        description="closed, half_open, open, forced_open or forced_closed (None: its "
        "upstream was not reported)"
    )


class MlShadow(MlComponent):
    kind: Literal["shadow"]
    status: Status
    total_decisions: int = Field(ge=0, description="copies that came back (compared or failed)")
    agreement_rate: float | None = Field(ge=0, le=1, description="null: none compared yet")
    dropped: dict[str, int] = Field(description="copies not sent, by reason")
    reasons: list[str]


class MlProcess(MlComponent):
    """The statistics worker or the rollout controller, as in components."""

    kind: Literal["statistics_worker", "rollout_controller"]
    status: Status
    reasons: list[str]


MlEntry = Annotated[MlUpstream | MlBreaker | MlShadow | MlProcess, Field(discriminator="kind")]


class AggregateAnswer(Answer):
    overall_health: Literal["healthy", "degraded", "unhealthy"] = Field(
        description="the worst component (an ML upstream down counts as degraded: fallback "
        "keeps users on deterministic answers)"
    )
    components: Components
    ml_components: list[MlEntry] = Field(
        description="the ML side: each ML upstream and its breaker, each shadow, the "
        "statistics worker, the rollout controller"
    )
