"""The settings of `proxy`, `control` and `history`, each declared once: type, default (as
written in YAML), bounds and help. `config.parse` builds the frozen `config.model` values
from them and runs the checks that compare settings; the README's table is made from these
declarations (`config.settings_table`). Upstreams are in `config.schema_upstreams`."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import TypeAdapter

from abgate.config.defaults import HISTORY_BUFFER, HISTORY_RETENTION, HISTORY_SAMPLE
from abgate.config.export import mask_url
from abgate.config.fields import Invalid, check_duration, check_string, shown
from abgate.config.model import Listen
from abgate.config.schema_connections import Secret
from abgate.config.settings import Section, setting
from abgate.config.values import (
    BOOLEAN,
    LISTEN,
    NAME,
    before,
    checked,
    duration,
    integer,
    number,
    reference,
    size,
)


class RetryBudget(Section):
    ratio: Annotated[float, number(low=0, high=1, message="expected 0..1")] = setting(
        1.0,
        "share of requests fallback retries may add (lower it when the control arm "
        "cannot absorb the treatment's share)",
    )
    min_per_second: Annotated[
        float, number(low=0, high=float("inf"), message="expected a number >= 0")
    ] = setting(5, "retries allowed per second whatever the share")


class ProxySection(Section):
    listen: Annotated[Listen, LISTEN] = setting("127.0.0.1:8080", "the data plane")
    admin_listen: Annotated[Listen, LISTEN] = setting(
        "127.0.0.1:9180", "`abgate proxy` workers: `/metrics`, `/health` on port + worker index"
    )
    max_body_size: Annotated[int, size()] = setting("10MiB", "larger request bodies get 413")
    buffer_body_size: Annotated[int, size()] = setting(
        "64KiB", "bodies up to this are buffered (replayable); at most `max_body_size`"
    )
    shutdown_timeout: Annotated[float, duration(high=3600)] = setting(
        "10s", "grace period for in-flight requests on SIGTERM"
    )
    random_seed: Annotated[int | None, integer(low=0, high=2**63 - 1, optional=True)] = setting(
        None, "seeds `when_missing: random` (reproducible tests and benchmarks)"
    )
    retry_budget: RetryBudget = setting(None, "fallback retries' budget")
    measurements: Annotated[bool, BOOLEAN] = setting(
        True, "per-arm sums for the statistics (off only to measure their cost)"
    )
    client_header_timeout: Annotated[float, duration(high=3600)] = setting(
        "10s", "the whole request head must arrive within this of its first byte (408)"
    )
    client_keepalive_timeout: Annotated[float, duration(high=86_400)] = setting(
        "75s", "an idle client connection is closed after this"
    )
    client_body_timeout: Annotated[float, duration(high=3600)] = setting(
        "60s", "longest pause between two reads of a request body (408)"
    )
    max_header_size: Annotated[int, size(low=1024)] = setting(
        "64KiB", "the whole request head; larger is 431"
    )
    max_connections: Annotated[int, integer(low=1, high=1_000_000)] = setting(
        4096, "client connections; beyond, new clients get 503"
    )


def _members(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise Invalid("expected a non-empty list of experiment names")
    return tuple(dict.fromkeys(value))


def _group_mapping(value: Any) -> Any:
    if value is not None and not isinstance(value, dict):
        raise Invalid("expected a mapping of group name to a list of experiments")
    return {} if value is None else value


Groups = Annotated[
    dict[Annotated[str, NAME], Annotated[tuple[str, ...], checked(_members)]],
    before(_group_mapping),
]


class ControlSection(Section):
    listen: Annotated[Listen, LISTEN] = setting(
        "127.0.0.1:8092",
        "control API; refuses a non-loopback address without `ABGATE_CONTROL_TOKEN` "
        "(`check-config` applies the same rule)",
    )
    default_experiment: str | None = setting(
        None,
        "what `current` means (and a command given no experiment) when no rollout is under way",
    )
    groups: Groups = setting(
        {},
        "names for sets of experiments, e.g. `{ml-agents: [ml-agent-rollout, "
        "documentation-keeper]}`: `scripts/emergency-rollback.sh ml-agents`",
    )
    report_time_scale: Annotated[
        float, number(low=1, high=1e7, message="expected a number from 1 to 1e7")
    ] = setting(
        1,
        "seconds counted per second of wall time in the reports (`days_at_100_percent`); 1 "
        "in production, larger only to rehearse a week in minutes (the answer shows it)",
    )


def _postgres_url(value: Any) -> str | None:
    if value is not None and (
        not isinstance(value, str) or not value.startswith(("postgres://", "postgresql://"))
    ):
        masked = mask_url(value) if isinstance(value, str) else value
        raise Invalid(f"expected a postgresql:// URL, got {shown(masked)}")
    return value


def _retention(value: Any) -> float:
    seconds = check_duration(value, high=3650 * 86_400.0)
    if seconds < 86_400:
        raise Invalid("at least 1d (history is kept in whole days)")
    return seconds


class HistorySection(Secret):
    postgres_url: Annotated[str | None, checked(_postgres_url)] = setting(
        None,
        "every decision and outcome in PostgreSQL (`ABGATE_HISTORY_URL` when this is not "
        "set); none: nothing is written. TLS in the URL as libpq has it "
        "(`?sslmode=verify-full&sslrootcert=/path/ca.pem`)",
    )
    retention: Annotated[float, checked(_retention)] = setting(
        HISTORY_RETENTION, "history kept, in whole days"
    )
    sample: Annotated[
        float, number(low=0, high=1, low_open=True, message="a share above 0 and at most 1")
    ] = setting(HISTORY_SAMPLE, "share of decisions recorded")
    buffer: Annotated[int, integer(low=1000, high=10_000_000)] = setting(
        HISTORY_BUFFER, "decisions held in memory at most while PostgreSQL is slow or down"
    )


_METHOD = re.compile(r"^[A-Z]{1,20}$")


def _methods(value: Any) -> Any:
    if value is not None and (not isinstance(value, list) or not value):
        raise Invalid("expected a list of HTTP methods such as [GET, POST]")
    return value


def _method(value: Any) -> str:
    if not isinstance(value, str) or not _METHOD.match(value.upper()):
        raise Invalid(f"not an HTTP method: {shown(value)}")
    return value.upper()


def _prefix(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.startswith("/")):
        raise Invalid(f"must be a path starting with /, got {shown(value)}")
    return value


def _regex(value: Any) -> re.Pattern[str] | None:
    if value is None:
        return None
    pattern = check_string(value)
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise Invalid(f"invalid regular expression: {exc}") from None


class RouteSection(Section):
    """A route: one matcher (prefix or regex) and one target (experiment or upstream); that
    exactly one of each is given is checked with the route (`config.parse`)."""

    name: Annotated[str | None, checked(check_string, optional=True)] = setting(
        None, "the route's name (as `GET /api/config` shows it)", shown="`route-N` (its index)"
    )
    prefix: Annotated[str | None, checked(_prefix)] = setting(
        None,
        "requests whose path starts with this (`/api/agent/`); each route has a prefix or a regex",
    )
    regex: Annotated[re.Pattern[str] | None, checked(_regex)] = setting(
        None, "or whose path matches this regular expression"
    )
    methods: Annotated[tuple[Annotated[str, checked(_method)], ...] | None, before(_methods)] = (
        setting(None, "only these methods (`[GET, POST]`); none: any method")
    )
    experiment: Annotated[str | None, reference("experiment")] = setting(
        None, "split between the experiment's arms; each route has an experiment or an upstream"
    )
    upstream: Annotated[str | None, reference("upstream")] = setting(
        None, "or sent to this upstream, no split"
    )
    replayable: Annotated[bool, BOOLEAN] = setting(
        False, "requests may be sent twice whatever their method (decision endpoints)"
    )


PROXY = TypeAdapter(ProxySection)
CONTROL = TypeAdapter(ControlSection)
HISTORY = TypeAdapter(HistorySection)
ROUTE = TypeAdapter(RouteSection)
