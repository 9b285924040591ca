"""The settings of each upstream, its circuit breaker and its active health check, each
declared once (see `config.settings`)."""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple
from urllib.parse import urlsplit

from pydantic import TypeAdapter

from abgate.config.fields import Invalid, shown
from abgate.config.settings import Section, setting
from abgate.config.values import NAME, before, checked, duration, integer, number, size

MAX_HOSTNAME = 253  # RFC 1035's limit on a name, as resolvers enforce it


class HttpAddress(NamedTuple):
    url: str
    host: str
    port: int


def _http_url(value: Any) -> HttpAddress:
    if not isinstance(value, str):
        raise Invalid("required: the upstream's http URL (http://host:port)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme != "http" or not parts.hostname:
        reason = "not a valid http URL"
        if parts is not None and parts.scheme == "https":
            reason += " (https upstreams are not supported yet: terminate TLS in front)"
        raise Invalid(f"{reason}: {shown(value)}")
    if len(parts.hostname) > MAX_HOSTNAME:
        raise Invalid(
            f"the host name has {len(parts.hostname):,} characters, more than DNS allows "
            f"({MAX_HOSTNAME}): {shown(value)}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise Invalid(
            "must not have a path or query: abgate forwards the request "
            f"path unchanged, got {shown(value)}"
        )
    return HttpAddress(value, parts.hostname, port or 80)


def _statuses(value: Any) -> frozenset[int]:
    if not isinstance(value, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in value
    ):
        raise Invalid("expected a list of HTTP status codes")
    return frozenset(value)


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise Invalid(f"expected a path starting with /, got {shown(value)}")
    return value


Rate = Annotated[float, number(low=0, high=1, low_open=True, message="expected a rate in (0, 1]")]


class BreakerSection(Section):
    """Defaults suit a decision API at ~100 req/s: trip within a second of a hard failure,
    come back on its own after a few seconds (see README for the comparison)."""

    window: Annotated[float, duration(high=3600)] = setting(
        "10s", "sliding time window for the rates"
    )
    minimum_calls: Annotated[int, integer(low=1, high=1_000_000)] = setting(
        20, "calls in the window before a rate can trip"
    )
    failure_rate: Rate = setting(0.5, "share of failed calls in the window that trips")
    consecutive_failures: Annotated[int, integer(low=1, high=1_000_000)] = setting(
        5, "failures in a row that trip, whatever the rate"
    )
    slow_call_duration: Annotated[float, duration()] = setting(
        "2s", "a call slower than this is slow"
    )
    slow_call_rate: Rate = setting(1.0, "share of slow calls in the window that trips")
    open_duration: Annotated[float, duration()] = setting(
        "5s", "first wait while open; doubles on each trip in a row"
    )
    max_open_duration: Annotated[float, duration()] = setting(
        "60s", "longest wait while open (at least `open_duration`)"
    )
    half_open_calls: Annotated[int, integer(low=1, high=10_000)] = setting(
        5, "trial calls let through once the wait is over"
    )
    failure_statuses: Annotated[frozenset[int], checked(_statuses)] = setting(
        [500, 502, 503, 504], "answers that count as failures, besides connect errors and timeouts"
    )


class HealthCheckSection(Section):
    path: Annotated[str, checked(_path)] = setting("/health", "GET this path; 2xx/3xx is healthy")
    interval: Annotated[float, duration()] = setting("5s", "time between two checks")
    timeout: Annotated[float, duration()] = setting("1s", "a check slower than this fails")


class UpstreamSection(Section):
    url: Annotated[HttpAddress, checked(_http_url)] = setting(
        None,
        "`http://host:port` (no path: the request path is forwarded unchanged)",
        shown="required",
    )
    connect_timeout: Annotated[float, duration()] = setting(
        "1s", "connect, and waiting for a pooled connection"
    )
    read_timeout: Annotated[float, duration()] = setting(
        "10s",
        "waiting for the response head once the request is sent (not extended by head "
        "bytes), then between body reads; the upstream is not timed while abgate waits on "
        "the client",
    )
    pool_size: Annotated[int, integer(low=1, high=100_000)] = setting(
        128, "connections kept to this upstream"
    )
    idle_timeout: Annotated[float, duration()] = setting(
        "30s",
        "idle pooled connections are closed this long after their last use (a timer per pool)",
    )
    response_timeout: Annotated[float | None, duration(optional=True)] = setting(
        None,
        "the whole response, head and body, from the request on (504 before the head, an "
        "abrupt close after)",
    )
    max_response_header_size: Annotated[int, size(low=1024)] = setting(
        "64KiB", "a larger response head is a 502"
    )

    breaker: BreakerSection = setting(None, "circuit breaker")
    health_check: HealthCheckSection | None = setting(
        None, "active check (`{}` for the defaults below); none: passive health only"
    )


def _at_least_one(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        raise Invalid("at least one upstream is required")
    return value


UpstreamSections = Annotated[dict[Annotated[str, NAME], UpstreamSection], before(_at_least_one)]
UPSTREAMS = TypeAdapter(UpstreamSections)
