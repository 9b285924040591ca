"""Where a request goes after the route match and the split, made once per config: a
`Destination` (an upstream as one route or arm reaches it), an `ExperimentRoute` (a split
between two of them), and the `Routing` a request is handled with; and the `Fallback` a
request carries when the control arm answers for the treatment."""

from __future__ import annotations

from dataclasses import dataclass, field

from abgate.config.model import ProxySettings
from abgate.proxy.breaker import Breaker
from abgate.proxy.measure import MetricExtractor, PhaseRef
from abgate.proxy.pool import UpstreamPool
from abgate.proxy.retry_budget import RetryBudget
from abgate.proxy.routing import Router
from abgate.proxy.shadow import Shadow
from abgate.proxy.split import Splitter
from abgate.proxy.traffic import TrafficStats


@dataclass(frozen=True, slots=True)
class Destination:
    """One upstream as reached through a route or an experiment arm."""

    pool: UpstreamPool
    breaker: Breaker
    stats: TrafficStats
    experiment: str  # "" when no experiment applies
    arm: str
    host_header: bytes
    extractor: MetricExtractor | None = None  # the experiment's extra metrics, if any
    phase: PhaseRef | None = None  # the experiment's current phase, if any
    # Routing fields of the answers it serves, made once: X-ABGate-Experiment and -Arm (as
    # the assigned arm, when no fallback), X-ABGate-Served-By.
    arm_fields: bytes = field(init=False, default=b"")
    served_field: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        if self.phase is not None:
            fields = f"X-ABGate-Experiment: {self.experiment}\r\nX-ABGate-Arm: {self.arm}\r\n"
            object.__setattr__(self, "arm_fields", fields.encode("latin-1"))
            served = f"X-ABGate-Served-By: {self.pool.name}\r\n".encode("latin-1")
            object.__setattr__(self, "served_field", served)


@dataclass(frozen=True, slots=True)
class ExperimentRoute:
    splitter: Splitter
    control: Destination
    treatment: Destination
    fallback: bool  # treatment failures may be answered by the control arm ...
    fallback_on_5xx: bool  # ... including 5xx answers
    replayable: bool  # the route's requests may be sent twice whatever their method
    shadow: Shadow | None  # copies of control-served requests to the treatment upstream


Target = Destination | ExperimentRoute


@dataclass(frozen=True, slots=True)
class Fallback:
    """A treatment-assigned request answered by the control arm. Under intention to treat it
    still counts, once, in the arm it was assigned, with what its user got (the final status,
    the time from the first try to the answer): a fallback is part of how the treatment
    behaves, and dropping it would unbalance the arms (a sample-ratio mismatch)."""

    reason: str
    assigned: Destination
    since: float  # when the first try began
    tried: tuple[int, float] | None = None  # the treatment try's status and seconds, if any


@dataclass(frozen=True, slots=True)
class Routing:
    """What a request is handled with, swapped whole on reload: a request reads it once, so
    in-flight requests finish on the config they started with."""

    routes: Router[Target]
    settings: ProxySettings
    budget: RetryBudget
