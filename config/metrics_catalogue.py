"""Every Prometheus family abgate exports (with its histogram's bucket bounds) and every metric
it measures itself, declared once.

Dashboards, alerts (monitoring/) and operators' queries depend on these names: a family is
renamed here or nowhere. The catalogue lives in `config`, the lowest layer (pure, imported by
`state`, `proxy` and `control`), so that the data plane, the live-state layer and the control
process each read a name from here and none of them imports another for it: the data plane
measures `SLOW_METRIC`, the rollout controller tests it.

A family is declared with its help and label names; `new()` makes the prometheus-client family
a collector fills at scrape time (the request path only bumps plain counters, proxy/metrics.py).
prometheus-client is imported when a family is made, so parsing a config never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )

# The metrics the proxy measures on every request, besides those an experiment declares.
LATENCY_METRIC = "latency"  # upstream seconds of an answer
ERROR_METRIC = "error"  # 0/1 per answer: a 5xx or no answer
BUILT_IN_METRIC_NAMES = frozenset({LATENCY_METRIC, ERROR_METRIC})
# 0/1 per answer: slower than the experiment's latency SLO. Measured with a latency SLO only,
# as a rollout's gate on "p95 at most 100 ms"; an experiment may not declare a metric so named.
SLOW_METRIC = "latency_over_slo"

# The prefix of the control process's own process_* families (`abgate_control_process_*`).
CONTROL_PROCESS = "abgate_control"


@dataclass(frozen=True, slots=True)
class Family:
    """A family's name (as prometheus-client takes it: a counter without `_total`), help and
    label names."""

    name: str
    help: str
    labels: tuple[str, ...] = ()

    def new(self) -> Metric:
        """An empty family of this name, help and labels, for a collector to fill."""
        raise NotImplementedError  # Counter, Gauge or Histogram


class Counter(Family):
    __slots__ = ()

    def new(self) -> CounterMetricFamily:
        from prometheus_client.core import CounterMetricFamily

        return CounterMetricFamily(self.name, self.help, labels=self.labels)


class Gauge(Family):
    __slots__ = ()

    def new(self) -> GaugeMetricFamily:
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(self.name, self.help, labels=self.labels)


class Histogram(Family):
    __slots__ = ()

    def new(self) -> HistogramMetricFamily:
        from prometheus_client.core import HistogramMetricFamily

        return HistogramMetricFamily(self.name, self.help, labels=self.labels)


# The histograms' bucket bounds (seconds): dashboards' quantiles are read from them.
# Decision endpoints answer in milliseconds to seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# What abgate itself adds to a request: tens of microseconds when healthy.
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
# A Redis command as this process sees it (the network included).
REDIS_COMMAND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Redis executes a command in microseconds; a slow one (a big HGETALL, a Lua script) in ms.
REDIS_SERVER_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)
# A flush to PostgreSQL, and each statement of it.
HISTORY_WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# --- The data plane: requests, upstreams, clients (proxy/metrics.py, proxy/runtime.py) ---
REQUESTS = Counter(
    "abgate_requests",
    "Proxied requests by experiment, arm, upstream and status class "
    "(experiment and arm are empty on routes without an experiment).",
    ("experiment", "arm", "upstream", "status_class"),
)
DECISION_LATENCY = Histogram(
    "ab_testing_decision_latency_seconds",
    "Upstream time of each decision, from sending the request to the whole response.",
    ("experiment", "arm"),
)
PROXY_OVERHEAD = Histogram(
    "abgate_proxy_overhead_seconds",
    "Time abgate adds to a request: its whole handling minus the upstream's part.",
)
UPSTREAM_ERRORS = Counter(
    "abgate_upstream_errors",
    "Failed upstream exchanges by kind (connect, timeout, closed, protocol, pool_timeout).",
    ("upstream", "kind"),
)
LOCAL_RESPONSES = Counter(
    "abgate_local_responses",
    "Responses abgate produced itself instead of an upstream.",
    ("status", "reason"),
)
FALLBACKS = Counter(
    "abgate_fallbacks",
    "Requests assigned the treatment arm and answered by the control arm "
    "(counted in the treatment arm: intention to treat), by experiment and reason.",
    ("experiment", "reason"),
)
BREAKER_TRANSITIONS = Counter(
    "abgate_breaker_transitions", "Circuit breaker state changes.", ("upstream", "from", "to")
)
EXPERIMENT_PERCENTAGE = Gauge(
    "abgate_experiment_percentage",
    "Treatment share this process routes with, in percent.",
    ("experiment",),
)
BREAKER_STATE = Gauge(
    "abgate_breaker_state",
    "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open, "
    "3 forced open, 4 forced closed.",
    ("upstream",),
)
UPSTREAM_CONNECTIONS = Gauge(
    "abgate_upstream_connections",
    "Pooled upstream connections (open, idle) and requests waiting for one.",
    ("upstream", "state"),
)
UPSTREAM_CONNECTS = Counter(
    "abgate_upstream_connects", "New connections opened to each upstream.", ("upstream",)
)
UPSTREAM_STALE_RETRIES = Counter(
    "abgate_upstream_stale_retries",
    "Requests re-sent on a fresh connection after a pooled one turned out closed.",
    ("upstream",),
)
RETRY_BUDGET_EXHAUSTED = Counter(
    "abgate_retry_budget_exhausted",
    "Fallback retries refused because the retry budget was spent.",
)
MEASUREMENT_FLUSH_FAILURES = Counter(
    "abgate_measurement_flush_failures",
    "Measurement flushes the store refused (kept and retried on the next flush).",
)
CLIENT_CONNECTIONS = Gauge("abgate_client_connections", "Client connections open.")
CLIENT_REFUSALS = Counter(
    "abgate_client_refusals",
    "Clients refused: header_timeout (408), header_too_large (431), "
    "max_connections (503), malformed (400).",
    ("reason",),
)

# --- Shadow mode (proxy/shadow.py) ---
SHADOW_COMPARISONS = Counter(
    "abgate_shadow_comparisons", "Shadow pairs compared, by result.", ("experiment", "result")
)
SHADOW_DROPPED = Counter(
    "abgate_shadow_dropped", "Shadow copies not sent.", ("experiment", "reason")
)
SHADOW_LATENCY = Histogram(
    "abgate_shadow_latency_seconds",
    "Latency of each side of the shadow pairs.",
    ("experiment", "side"),
)

# --- Flag store and live-state channel (control/flag_backend.py, state/) ---
FLAG_STORE_CONNECTED = Gauge(
    "abgate_flag_store_connected",
    "1 when the flag store is reachable (always 1 for the embedded store).",
)
FLAG_STATE_AGE = Gauge(
    "abgate_flag_state_age_seconds", "Seconds since this process last heard from Redis."
)
FLAG_STORE_RECONNECTS = Counter(
    "abgate_flag_store_reconnects", "Connections to Redis lost and retried."
)
FLAG_RESYNCS = Counter(
    "abgate_flag_resyncs", "Full re-reads of the flags from Redis (one per (re)connect)."
)
FLAG_RESEEDS = Counter("abgate_flag_reseeds", "Flags put back into a Redis that lacked them.")
FLAG_WRITES_UNREPLICATED = Counter(
    "abgate_flag_writes_unreplicated",
    "Flag writes fewer replicas confirmed than flags.redis.wait_replicas asks.",
)
REDIS_COMMAND_SECONDS = Histogram(
    "abgate_redis_command_seconds",
    "Redis commands this process sent, by command (a pipeline counts once).",
    ("command",),
)
REDIS_SERVER_SECONDS = Histogram(
    "abgate_redis_server_seconds",
    "Redis' own execution time per command (INFO commandstats, every client's "
    "calls; each poll interval's mean per call of each command).",
    ("command",),
)
LIVE_CHANNEL_CONNECTED = Gauge(
    "abgate_live_channel_connected",
    "1 when this data plane is connected to its control process (abgate run).",
)
LIVE_CHANNEL_RECONNECTS = Counter(
    "abgate_live_channel_reconnects",
    "Connections to the control process lost and made again (flags re-read each time).",
)
DATA_PLANES_CONNECTED = Gauge(
    "abgate_data_planes_connected",
    "Data planes connected to this control process over the live-state channel.",
)

# --- Config reloads (control/reload.py) ---
CONFIG_RELOADS = Counter("abgate_config_reload", "Config reloads by result.", ("result",))
CONFIG_LAST_RELOAD_OK = Gauge(
    "abgate_config_last_reload_successful",
    "1 unless the file's last reload was refused (the config loaded before it is served).",
)
CONFIG_LOADED_AT = Gauge(
    "abgate_config_loaded_timestamp_seconds", "When the running config was loaded."
)

# --- History in PostgreSQL (control/history.py) ---
HISTORY_DROPPED = Counter(
    "abgate_history_dropped",
    "History records dropped: the buffer was full (PostgreSQL slow or down) or the last "
    "flush at shutdown failed.",
)
HISTORY_WRITTEN = Counter("abgate_history_written", "History records written.")
HISTORY_DUPLICATES = Counter(
    "abgate_history_duplicates",
    "Decisions a retried flush found stored already (its commit had landed unseen).",
)
HISTORY_DEAD_LETTERS = Counter(
    "abgate_history_dead_letters",
    "Records PostgreSQL refused, set aside in ab_testing.dead_letters.",
)
HISTORY_BUFFERED = Gauge("abgate_history_buffered", "History records waiting in memory.")
HISTORY_WRITE_SECONDS = Histogram(
    "abgate_history_write_seconds",
    "Time of each flush to PostgreSQL (one transaction: the COPY and the small rows).",
)
HISTORY_QUERY_SECONDS = Histogram(
    "abgate_history_query_seconds",
    "Time of each statement of a flush to PostgreSQL, from abgate's side, counted as "
    "PostgreSQL counts calls: the COPY once, each row of a pipelined run its share.",
)
HISTORY_CONNECTED = Gauge("abgate_history_connected", "1 when the history store is reachable.")

# --- Statistics (control/stats_worker.py) ---
STATS_P_VALUE = Gauge(
    "abgate_stats_p_value", "Latest p-value per metric.", ("experiment", "metric", "test")
)
STATS_EFFECT = Gauge(
    "abgate_stats_effect",
    "Treatment minus control, current phase.",
    ("experiment", "metric", "kind"),
)
STATS_SAMPLES = Gauge(
    "abgate_stats_samples", "Requests per arm, current phase.", ("experiment", "arm")
)
STATS_EVALUATION_ERRORS = Counter(
    "abgate_stats_evaluation_errors",
    "Evaluations of an experiment that failed.",
    ("experiment",),
)
STATS_PROCESS_RESTARTS = Counter(
    "abgate_stats_process_restarts",
    "Statistics worker processes that died (killed, out of memory) and were replaced.",
    (),
)
STATS_INTERVAL = Gauge(
    "abgate_stats_interval",
    "The sequential test's interval of treatment minus control (valid at every look), "
    "current phase.",
    ("experiment", "metric", "bound"),
)
STATS_IMPROVEMENT = Gauge(
    "abgate_stats_improvement",
    "Relative change of the treatment, signed by the metric's direction (> 0 is "
    "better), and 1 when the sequential test is significant after Holm.",
    ("experiment", "metric", "kind"),
)
STATS_SRM_P_VALUE = Gauge(
    "abgate_stats_srm_p_value",
    "Sample-ratio-mismatch p-value, current phase.",
    ("experiment",),
)
OUTCOMES_WAITING = Gauge(
    "abgate_outcomes_waiting",
    "Outcome values waiting for their decision's maturity (a metric's maturity window), "
    "kept by the measurement store: three for an outcome posted with a covariate.",
)

# --- Rollouts (control/rollout/gauges.py) ---
ROLLOUT_STAGE_PERCENTAGE = Gauge(
    "abgate_rollout_stage_percentage",
    "The treatment percentage of the rollout's current stage (95 in a 5% holdout).",
    ("experiment",),
)
ROLLOUT_STATE = Gauge(
    "abgate_rollout_state", "1 for the rollout's current state.", ("experiment", "state")
)
ROLLOUT_ETA = Gauge(
    "abgate_rollout_eta_seconds",
    "Seconds until the stage has the samples it needs (absent when unknown).",
    ("experiment",),
)
ROLLOUT_SAMPLES_NEEDED = Gauge(
    "abgate_rollout_samples_needed",
    "Samples per arm the current stage needs (sequential design).",
    ("experiment", "arm"),
)
ROLLOUT_GATE_STATUS = Gauge(
    "abgate_rollout_gate_status",
    "Each gate of the last decision: 1 pass, 0 hold, -1 fail.",
    ("experiment", "gate"),
)
ROLLOUT_DECISIONS = Counter(
    "abgate_rollout_decisions",
    "Controller decisions by decision and reason kind.",
    ("decision", "reason"),
)
ROLLOUT_ERRORS = Counter(
    "abgate_rollout_errors", "Rollout ticks that failed (kept going).", ("experiment",)
)

FAMILIES: tuple[Family, ...] = tuple(v for v in globals().values() if isinstance(v, Family))
