"""The configuration as frozen, typed values. Built once by `config.parse`, never mutated.

The defaults of what a file may leave out are declared with each setting (`config.schema*`);
the settings also made in code (tests, the environment's Redis URL) default here to the same
values, read from `config.defaults`.

Percentages are held as basis points (hundredths of a percent, 0..10000) so that bucketing
compares integers, matching the 0.01% granularity of GrowthBook v2 and nginx split_clients.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from abgate.config.defaults import (
    HISTORY_BUFFER,
    HISTORY_RETENTION,
    HISTORY_SAMPLE,
    REDIS_DB,
    REDIS_WAIT_REPLICAS,
    REDIS_WAIT_TIMEOUT,
    SENTINEL_TLS,
    TLS_CHECK_HOSTNAME,
)
from abgate.config.durations import seconds
from abgate.config.metrics_catalogue import ERROR_METRIC, LATENCY_METRIC

StickyKind = Literal["header", "cookie", "query", "client_ip"]
WhenMissing = Literal["random", "control", "client_ip"]

BASIS_POINTS = 10_000  # 100.00%


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    listen: Listen
    # Metrics and health of each `abgate proxy` worker: worker i listens on admin.port + i.
    admin: Listen
    max_body_size: int
    # Request bodies up to this size are read whole before forwarding (so they can be replayed
    # on a fresh connection); larger ones stream.
    buffer_body_size: int
    shutdown_timeout: float
    # Seeds the per-request coin of `when_missing: random`; None draws from the OS.
    random_seed: int | None
    # Fallback retries on the control arm may add at most this share of requests (and at
    # least retry_min_per_second), so a failing ML backend cannot double the load.
    retry_budget_ratio: float
    retry_min_per_second: float
    # Per-arm sums for the statistics (latency, errors); off only to measure their cost.
    measurements: bool
    # Client side, with nginx's defaults: the request head must arrive within
    # client_header_timeout of its first byte, and be at most max_header_size bytes in all;
    # an idle keep-alive connection closes after client_keepalive_timeout; the body may pause
    # at most client_body_timeout between two reads. Beyond max_connections, new clients get
    # a 503 and are closed.
    client_header_timeout: float
    client_keepalive_timeout: float
    client_body_timeout: float
    max_header_size: int
    max_connections: int


@dataclass(frozen=True, slots=True)
class ControlSettings:
    listen: Listen
    # What `current` (and a command given no experiment) means when no rollout is running
    # and there are several experiments (control/current.py).
    default_experiment: str | None
    # Names for sets of experiments, for the commands that take several (an emergency
    # rollback of `ml-agents`): group -> experiment names, in the order written.
    groups: Mapping[str, tuple[str, ...]]
    # Reports count this many seconds for each second of wall time (days at 100%). 1 in
    # production; a rehearsal of a week-long plan in minutes sets it and says so.
    report_time_scale: float

    @property
    def is_loopback(self) -> bool:
        host = self.listen.host
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    def exposure_problem(self, token: str | None) -> str | None:
        """Why the control API may not serve here: beyond loopback it needs a token."""
        if token or self.is_loopback:
            return None
        return (
            f"the control API would listen on {self.listen.host}, which is not loopback, "
            "without a token: set ABGATE_CONTROL_TOKEN"
        )


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret is read from when a connection is made: an environment variable or a
    file (read again for every new connection, so a rotated file is picked up without a
    restart). The config holds only this reference, never the value."""

    env: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS to a server: the CA that signed its certificate (None: the system's CAs), a
    client certificate for mutual TLS, and whether its name must match the certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = TLS_CHECK_HOSTNAME


@dataclass(frozen=True, slots=True)
class SentinelSettings:
    """Redis Sentinel: the sentinels to ask, the service (master name) they watch, and their
    own credentials (sentinels may have an ACL user and password of their own)."""

    addresses: tuple[tuple[str, int], ...]
    service: str
    username: str | None = None
    password: SecretRef | None = None
    tls: bool = SENTINEL_TLS  # the sentinels themselves speak TLS


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """How to reach the Redis that holds the shared state: one server (`url`) or the
    primary that Sentinel names (`sentinel`), exactly one of them."""

    url: str | None = None  # redis://, rediss:// (TLS) or unix://; may hold user and password
    sentinel: SentinelSettings | None = None
    db: int = REDIS_DB  # with sentinel (a URL names its own)
    username: str | None = None  # the ACL user
    password: SecretRef | None = None
    tls: TlsSettings | None = None  # None: plain TCP (a rediss:// URL: TLS, system CAs)
    # A flag write answers once this many replicas have it (WAIT), so a failover does not
    # lose it; after wait_timeout it answers anyway, logged and counted.
    wait_replicas: int = REDIS_WAIT_REPLICAS  # its parse: 1 with sentinel
    wait_timeout: float = seconds(REDIS_WAIT_TIMEOUT)

    @property
    def uses_tls(self) -> bool:
        return self.tls is not None or (self.url or "").startswith("rediss://")


@dataclass(frozen=True, slots=True)
class FlagsSettings:
    # Redis makes the flag store shared by many sidecars; None keeps flags in this process.
    # ABGATE_REDIS_URL, when set, takes the place of a missing flags.redis (or redis_url).
    redis: RedisSettings | None
    key_prefix: str
    # Local snapshot: the embedded store's state, the control plane's durable copy with Redis,
    # and what a proxy starts from while Redis is down. None: not persisted.
    state_file: str | None
    heartbeat_interval: float


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """The history store: every decision and outcome in PostgreSQL. No URL: nothing is
    written (ABGATE_HISTORY_URL, when set, takes the place of a missing postgres_url)."""

    postgres_url: str | None = None
    retention: float = seconds(HISTORY_RETENTION)  # history kept (whole days)
    sample: float = HISTORY_SAMPLE  # share of decisions recorded
    # Decisions held in memory at most while PostgreSQL is slow or down.
    buffer: int = HISTORY_BUFFER
    # The password, when not in the URL: read at each new connection (rotation). TLS is
    # set in the URL as libpq has it: ?sslmode=verify-full&sslrootcert=/path/ca.pem
    password: SecretRef | None = None


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    window: float  # sliding time window for the rates
    minimum_calls: int  # calls in the window before a rate can trip
    failure_rate: float  # 0..1
    consecutive_failures: int
    slow_call_duration: float
    slow_call_rate: float  # 0..1
    open_duration: float  # first wait in OPEN; doubles on each trip in a row
    max_open_duration: float
    half_open_calls: int
    failure_statuses: frozenset[int]  # besides connect errors and timeouts


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    path: str  # GET this path; 2xx/3xx is healthy
    interval: float
    timeout: float


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    url: str
    host: str
    port: int
    connect_timeout: float
    # Longest wait for the response head once the request is sent (bytes of the head do not
    # extend it), then between two reads of its body (nginx's proxy_read_timeout).
    read_timeout: float
    pool_size: int
    idle_timeout: float
    breaker: BreakerConfig
    health_check: HealthCheckConfig | None
    # The whole response, head and body, from the moment it is asked for; None: no limit.
    response_timeout: float | None
    max_response_header_size: int  # a longer response head is a 502


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    prefix: str | None
    regex: re.Pattern[str] | None
    methods: frozenset[str] | None
    experiment: str | None
    upstream: str | None
    # The request may be sent twice (decision endpoints are): a failed treatment call with a
    # non-idempotent method can then still fall back to the control arm.
    replayable: bool


@dataclass(frozen=True, slots=True)
class StickySource:
    kind: StickyKind
    name: str  # header, cookie or query parameter name; "" for client_ip


@dataclass(frozen=True, slots=True)
class ArmConfig:
    name: str
    upstream: str


JsonPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    percentage_bp: int  # share of control-served requests copied to the treatment upstream
    compare: tuple[tuple[str, JsonPath], ...]  # ("$.decision", ("decision",))
    max_in_flight: int


MetricType = Literal["binary", "continuous"]
Direction = Literal["higher", "lower"]


@dataclass(frozen=True, slots=True)
class MetricConfig:
    """A metric an experiment is judged on. Its type picks the test (binary: rates;
    continuous: means) and never changes with the data; its direction says which way is
    better. Values come from each answer (a JSON field or a numeric header) or, with neither,
    from business outcomes posted to the control API."""

    name: str
    type: MetricType
    direction: Direction
    json_path: JsonPath | None = None
    header: str | None = None
    # Seconds after its decision before an outcome counts (None: at once): the gates and the
    # reports see only mature decisions' outcomes, so late ones do not bias early looks.
    maturity: float | None = None

    @property
    def from_answer(self) -> bool:
        return self.json_path is not None or self.header is not None


# Measured by the proxy on every request.
LATENCY = MetricConfig(LATENCY_METRIC, "continuous", "lower")
ERROR = MetricConfig(ERROR_METRIC, "binary", "lower")
BUILT_IN_METRICS = {LATENCY.name: LATENCY, ERROR.name: ERROR}


@dataclass(frozen=True, slots=True)
class Amount:
    """A margin or an effect: absolute (in the metric's unit) or relative to the control
    arm's mean (`10%` in the YAML)."""

    value: float
    relative: bool

    def absolute(self, control_mean: float) -> float:
        return self.value * abs(control_mean) if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


@dataclass(frozen=True, slots=True)
class LoadTestConfig:
    """A load test a stage must pass before it may be promoted (control/load_test.py)."""

    requests_per_second: float
    duration: float
    p95_max: float


@dataclass(frozen=True, slots=True)
class StageConfig:
    percentage_bp: int
    approval: bool  # a person approves before the rollout moves to this stage
    min_duration: float  # seconds this stage runs at least before it may be promoted
    load_test: LoadTestConfig | None


@dataclass(frozen=True, slots=True)
class GuardrailConfig:
    metric: str
    margin: Amount  # how much worse the treatment may be and still count as no harm


# The primary's default non-inferiority margin, as a share of its minimum detectable effect.
# At the MDE itself a model half an MDE worse shipped 15% of the time (it is "within the
# margin"); at three quarters, none of 100, for A/A rollouts 1.2x as long
# (benchmarks/gate_sim.py margin, RESULTS.md "The primary's margin"). Half the MDE makes
# that a guarantee of the test itself, for rollouts over twice as long: a plan that wants
# it declares `margin`.
DEFAULT_MARGIN_SHARE = 0.75


@dataclass(frozen=True, slots=True)
class PrimaryConfig:
    """The metric a rollout is for. A stage is promoted only once the primary's own samples
    (outcomes received, per arm) reach the planned size and it is shown non-inferior within
    its margin (its guardrail margin if it is also a guardrail, else `margin`, by default
    three quarters of the minimum detectable effect). `allow_unmeasured` (default false)
    promotes without it: a declared choice."""

    metric: str
    minimum_detectable_effect: Amount
    allow_unmeasured: bool
    margin: Amount | None  # None: DEFAULT_MARGIN_SHARE of the minimum detectable effect

    @property
    def non_inferiority_margin(self) -> Amount:
        if self.margin is not None:
            return self.margin
        effect = self.minimum_detectable_effect
        return Amount(effect.value * DEFAULT_MARGIN_SHARE, effect.relative)


@dataclass(frozen=True, slots=True)
class SloConfig:
    """Absolute limits on the treatment arm. `latency_quantile` 0.95 with `latency_limit`
    0.1 reads "p95 at most 100 ms": at most 5% of answers slower than 100 ms."""

    latency_quantile: float | None = None
    latency_limit: float | None = None
    error_rate: float | None = None


@dataclass(frozen=True, slots=True)
class HoldoutConfig:
    """A control share kept through the last stage's bake: the treatment runs at
    100% - `percentage_bp` there, compared with the gates of every other stage, and is
    released to 100% once they pass (docs/rollouts.md)."""

    percentage_bp: int


DEFAULT_HOLDOUT = HoldoutConfig(500)  # plans with a primary metric, unless `holdout: false`

DEFAULT_GUARDRAILS = (
    GuardrailConfig(ERROR_METRIC, Amount(0.005, False)),
    GuardrailConfig(LATENCY_METRIC, Amount(0.10, True)),
)


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    stages: tuple[StageConfig, ...]
    max_hold: float
    tick: float
    primary: PrimaryConfig | None
    guardrails: tuple[GuardrailConfig, ...]
    slo: SloConfig
    alpha: float
    power: float
    bake: float  # seconds the last stage runs (its holdout compared) before completion
    breaker_grace: float  # treatment breaker open longer than this: rollback
    holdout: HoldoutConfig | None  # None: the last stage is 100%, SLOs only

    @property
    def percentages(self) -> list[float]:
        return [stage.percentage_bp / 100 for stage in self.stages]

    def holds_out(self, index: int) -> bool:
        """Whether stage `index` is the holdout (the last stage, with a control share)."""
        return self.holdout is not None and index == len(self.stages) - 1

    def live_bp(self, index: int) -> int:
        """The treatment share stage `index` runs at: its percentage, but for the holdout."""
        if self.holdout is not None and self.holds_out(index):
            return 10_000 - self.holdout.percentage_bp
        return self.stages[index].percentage_bp


@dataclass(frozen=True, slots=True)
class ExperimentConfig:
    name: str
    control: ArmConfig
    treatment: ArmConfig
    sticky: tuple[StickySource, ...]
    when_missing: WhenMissing
    seed: str
    percentage_bp: int
    # Treatment failures (connect error, timeout; 5xx when fallback_on_5xx) are answered by
    # the control arm when it is safe to resend the request.
    fallback: bool
    fallback_on_5xx: bool
    shadow: ShadowConfig | None
    metrics: tuple[MetricConfig, ...]  # declared ones; latency and error are built in
    rollout: RolloutPlan | None = None

    def metric(self, name: str) -> MetricConfig | None:
        """A declared or built-in metric by name."""
        built_in = BUILT_IN_METRICS.get(name)
        if built_in is not None:
            return built_in
        return next((m for m in self.metrics if m.name == name), None)


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    proxy: ProxySettings
    control: ControlSettings
    flags: FlagsSettings
    upstreams: Mapping[str, UpstreamConfig]
    routes: tuple[RouteConfig, ...]
    experiments: Mapping[str, ExperimentConfig]
    history: HistorySettings = HistorySettings()
    # The files `source` extends, nearest first (config/layers.py): a reload watches them too.
    bases: tuple[str, ...] = ()
