"""Configuration schema: upstreams, with their breaker and active health check."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

from abgate.config.fields import Reader
from abgate.config.model import BreakerConfig, HealthCheckConfig, UpstreamConfig
from abgate.config.yaml_lines import KeyPath


class UpstreamSchema:
    r: Reader
    upstream_names: set[str]

    def _upstreams(self, value: Any) -> dict[str, UpstreamConfig] | None:
        path: KeyPath = ("upstreams",)
        if not isinstance(value, dict) or not value:
            self.r.problem(path, "at least one upstream is required")
            return None
        out: dict[str, UpstreamConfig] = {}
        for name, body in value.items():
            upstream = self._upstream(name, body, (*path, name))
            if upstream is not None:
                out[name] = upstream
        return out

    def _upstream(self, name: str, value: Any, path: KeyPath) -> UpstreamConfig | None:
        keys = {
            "url",
            "connect_timeout",
            "read_timeout",
            "pool_size",
            "idle_timeout",
            "breaker",
            "health_check",
            "response_timeout",
            "max_response_header_size",
        }
        section = self.r.mapping(value, path, keys)
        valid_name = self.r.name(name, path)
        if section is None:
            return None
        url = section.get("url")
        host, port = self._http_url(url, (*path, "url"))
        connect = self.r.duration(section.get("connect_timeout", "1s"), (*path, "connect_timeout"))
        read = self.r.duration(section.get("read_timeout", "10s"), (*path, "read_timeout"))
        pool = self.r.integer(
            section.get("pool_size", 128), (*path, "pool_size"), low=1, high=100_000
        )
        idle = self.r.duration(section.get("idle_timeout", "30s"), (*path, "idle_timeout"))
        total = None
        if section.get("response_timeout") is not None:
            total = self.r.duration(section["response_timeout"], (*path, "response_timeout"))
        head_limit = self.r.size(
            section.get("max_response_header_size", "64KiB"),
            (*path, "max_response_header_size"),
            low=1024,
        )
        breaker = self._breaker(section.get("breaker"), (*path, "breaker"))
        check = self._health_check(section.get("health_check"), (*path, "health_check"))
        if (
            valid_name is None
            or host is None
            or None in (connect, read, pool, idle, head_limit)
            or breaker is None
        ):
            return None
        return UpstreamConfig(
            name=name,
            url=cast(str, url),
            host=host,
            port=cast(int, port),
            connect_timeout=cast(float, connect),
            read_timeout=cast(float, read),
            pool_size=cast(int, pool),
            idle_timeout=cast(float, idle),
            breaker=breaker,
            health_check=check if isinstance(check, HealthCheckConfig) else None,
            response_timeout=total,
            max_response_header_size=cast(int, head_limit),
        )

    def _health_check(self, value: Any, path: KeyPath) -> HealthCheckConfig | bool | None:
        if value is None:
            return None
        section = self.r.mapping(value, path, {"path", "interval", "timeout"})
        if section is None:
            return False
        check_path = section.get("path", "/health")
        if not isinstance(check_path, str) or not check_path.startswith("/"):
            self.r.problem(
                (*path, "path"), f"expected a path starting with '/', got {check_path!r}"
            )
            return False
        interval = self.r.duration(section.get("interval", "5s"), (*path, "interval"))
        timeout = self.r.duration(section.get("timeout", "1s"), (*path, "timeout"))
        if interval is None or timeout is None:
            return False
        return HealthCheckConfig(check_path, interval, timeout)

    def _breaker(self, value: Any, path: KeyPath) -> BreakerConfig | None:
        """Defaults suit a decision API at ~100 req/s: trip within a second of a hard
        failure, come back on its own after a few seconds (see README for the comparison)."""
        keys = {
            "window",
            "minimum_calls",
            "failure_rate",
            "consecutive_failures",
            "slow_call_duration",
            "slow_call_rate",
            "open_duration",
            "max_open_duration",
            "half_open_calls",
            "failure_statuses",
        }
        section = self.r.mapping(value, path, keys)
        if section is None:
            return None
        r = self.r

        def rate(key: str, default: float) -> float | None:
            number = section.get(key, default)
            if (
                isinstance(number, bool)
                or not isinstance(number, int | float)
                or not 0 < number <= 1
            ):
                r.problem((*path, key), f"expected a rate in (0, 1], got {number!r}")
                return None
            return float(number)

        statuses = section.get("failure_statuses", [500, 502, 503, 504])
        if not isinstance(statuses, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            r.problem((*path, "failure_statuses"), "expected a list of HTTP status codes")
            statuses = None
        values = (
            r.duration(section.get("window", "10s"), (*path, "window"), high=3600),
            r.integer(
                section.get("minimum_calls", 20), (*path, "minimum_calls"), low=1, high=1_000_000
            ),
            rate("failure_rate", 0.5),
            r.integer(
                section.get("consecutive_failures", 5),
                (*path, "consecutive_failures"),
                low=1,
                high=1_000_000,
            ),
            r.duration(section.get("slow_call_duration", "2s"), (*path, "slow_call_duration")),
            rate("slow_call_rate", 1.0),
            r.duration(section.get("open_duration", "5s"), (*path, "open_duration")),
            r.duration(section.get("max_open_duration", "60s"), (*path, "max_open_duration")),
            r.integer(
                section.get("half_open_calls", 5), (*path, "half_open_calls"), low=1, high=10_000
            ),
        )
        if None in values or statuses is None:
            return None
        (
            window,
            minimum,
            failure_rate,
            consecutive,
            slow_duration,
            slow_rate,
            open_for,
            max_open,
            half_open,
        ) = values
        return BreakerConfig(
            window=cast(float, window),
            minimum_calls=cast(int, minimum),
            failure_rate=cast(float, failure_rate),
            consecutive_failures=cast(int, consecutive),
            slow_call_duration=cast(float, slow_duration),
            slow_call_rate=cast(float, slow_rate),
            open_duration=cast(float, open_for),
            max_open_duration=max(cast(float, max_open), cast(float, open_for)),
            half_open_calls=cast(int, half_open),
            failure_statuses=frozenset(statuses),
        )

    def _http_url(self, value: Any, path: KeyPath) -> tuple[str | None, int | None]:
        if not isinstance(value, str):
            self.r.problem(path, "required: the upstream's http URL (http://host:port)")
            return None, None
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme != "http" or not parts.hostname:
            reason = "not a valid http URL"
            if parts is not None and parts.scheme == "https":
                reason += " (https upstreams are not supported yet: terminate TLS in front)"
            self.r.problem(path, f"{reason}: {value!r}")
            return None, None
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            self.r.problem(
                path,
                "must not have a path or query: abgate forwards the request "
                f"path unchanged, got {value!r}",
            )
            return None, None
        return parts.hostname, port or 80
