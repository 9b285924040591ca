"""The configuration schema: YAML text -> a validated, frozen `Config`, or every problem at once."""

from __future__ import annotations

import re
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import urlsplit

from config.errors import ConfigError, Problem
from config.fields import Reader
from config.model import (
    ArmConfig,
    BreakerConfig,
    Config,
    ControlSettings,
    ExperimentConfig,
    FlagsSettings,
    HealthCheckConfig,
    JsonPath,
    Listen,
    MetricConfig,
    ProxySettings,
    RouteConfig,
    ShadowConfig,
    StickySource,
    UpstreamConfig,
    WhenMissing,
)
from config.yaml_lines import KeyPath, load_located

_METHOD = re.compile(r"^[A-Z]{1,20}$")
_STICKY_KINDS = ("header", "cookie", "query")
_JSON_PATH = re.compile(r"^\$((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\])+)$")
_JSON_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


def _json_path(text: Any) -> JsonPath | None:
    """`$.a.b[0]` -> ("a", "b", 0): the small JSONPath subset shadow comparison needs."""
    if not isinstance(text, str):
        return None
    match = _JSON_PATH.match(text)
    if match is None:
        return None
    return tuple(name if name else int(index)
                 for name, index in _JSON_STEP.findall(match.group(1)))


_BAD_METHODS: frozenset[str] = frozenset({"<invalid>"})
_WHEN_MISSING: tuple[WhenMissing, ...] = ("random", "control", "client_ip")


def load_config(path: str | Path) -> Config:
    """Read and validate a configuration file; raises ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = Problem("", None, f"cannot read the file: {exc}")
        raise ConfigError(source, [problem]) from exc
    return parse_config(text, source)


def parse_config(text: str, source: str = "<config>") -> Config:
    doc = load_located(text, source)
    reader = Reader(doc)
    config = _Schema(reader, source).build(doc.value)
    if reader.problems or config is None:
        raise ConfigError(source, reader.problems)
    return config


class _Schema:
    def __init__(self, reader: Reader, source: str) -> None:
        self.r = reader
        self.source = source
        # Names declared in the file: references are checked against these, so one bad
        # upstream is reported once, not again by everything that refers to it.
        self.upstream_names: set[str] = set()
        self.experiment_names: set[str] = set()

    def build(self, root: Any) -> Config | None:
        top = self.r.mapping(root, (), {"proxy", "control", "flags", "upstreams", "routes",
                                        "experiments"})
        if top is None:
            return None
        for key, names in (("upstreams", self.upstream_names),
                           ("experiments", self.experiment_names)):
            if isinstance(top.get(key), dict):
                names.update(top[key])
        proxy = self._proxy(top.get("proxy"))
        control = self._control(top.get("control"))
        flags = self._flags(top.get("flags"))
        upstreams = self._upstreams(top.get("upstreams"))
        experiments = self._experiments(top.get("experiments"), upstreams)
        routes = self._routes(top.get("routes"), upstreams, experiments)
        if proxy and control and proxy.listen == control.listen and proxy.listen.port != 0:
            self.r.problem(("control", "listen"), "is the same address as proxy.listen")
        if proxy is None or control is None or upstreams is None or routes is None:
            return None
        if experiments is None or flags is None:
            return None
        return Config(
            source=self.source,
            proxy=proxy,
            control=control,
            flags=flags,
            upstreams=MappingProxyType(upstreams),
            routes=routes,
            experiments=MappingProxyType(experiments),
        )

    def _proxy(self, value: Any) -> ProxySettings | None:
        path: KeyPath = ("proxy",)
        keys = {"listen", "admin_listen", "max_body_size", "buffer_body_size",
                "shutdown_timeout", "random_seed", "retry_budget", "measurements"}
        section = self.r.mapping(value, path, keys)
        if section is None:
            return None
        listen = self.r.listen(section.get("listen", "127.0.0.1:8080"), (*path, "listen"))
        admin = self.r.listen(section.get("admin_listen", "127.0.0.1:9180"),
                              (*path, "admin_listen"))
        max_body = self.r.size(section.get("max_body_size", "10MiB"), (*path, "max_body_size"))
        buffered = self.r.size(section.get("buffer_body_size", "64KiB"),
                               (*path, "buffer_body_size"))
        grace = self.r.duration(section.get("shutdown_timeout", "10s"),
                                (*path, "shutdown_timeout"), high=3600)
        seed_value = section.get("random_seed")
        seed = None
        if seed_value is not None:
            seed = self.r.integer(seed_value, (*path, "random_seed"), low=0, high=2**63 - 1)
        budget = self.r.mapping(section.get("retry_budget"), (*path, "retry_budget"),
                                {"ratio", "min_per_second"}) or {}
        ratio = budget.get("ratio", 0.2)
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            self.r.problem((*path, "retry_budget", "ratio"), f"expected 0..1, got {ratio!r}")
            ratio = None
        floor = budget.get("min_per_second", 5)
        if isinstance(floor, bool) or not isinstance(floor, int | float) or floor < 0:
            self.r.problem((*path, "retry_budget", "min_per_second"),
                           f"expected a number >= 0, got {floor!r}")
            floor = None
        measurements = self.r.boolean(section.get("measurements", True),
                                      (*path, "measurements"))
        if None in (listen, admin, max_body, buffered, grace, ratio, floor, measurements):
            return None
        return ProxySettings(
            listen=cast(Listen, listen),
            admin=cast(Listen, admin),
            max_body_size=cast(int, max_body),
            buffer_body_size=cast(int, buffered),
            shutdown_timeout=cast(float, grace),
            random_seed=seed,
            retry_budget_ratio=float(cast(float, ratio)),
            retry_min_per_second=float(cast(float, floor)),
            measurements=bool(measurements),
        )

    def _control(self, value: Any) -> ControlSettings | None:
        section = self.r.mapping(value, ("control",), {"listen"})
        if section is None:
            return None
        listen = self.r.listen(section.get("listen", "127.0.0.1:8092"), ("control", "listen"))
        return ControlSettings(listen) if listen else None

    def _flags(self, value: Any) -> FlagsSettings | None:
        path: KeyPath = ("flags",)
        section = self.r.mapping(value, path, {"redis_url", "key_prefix", "state_file",
                                               "heartbeat_interval"})
        if section is None:
            return None
        redis_url = section.get("redis_url")
        if redis_url is not None and (not isinstance(redis_url, str) or not
                                      redis_url.startswith(("redis://", "rediss://", "unix://"))):
            self.r.problem((*path, "redis_url"), f"expected a redis:// URL, got {redis_url!r}")
            redis_url = None
        prefix = self.r.name(section.get("key_prefix", "abgate"), (*path, "key_prefix"))
        state_file = section.get("state_file", ".abgate/flags.json")
        if state_file is not None and (not isinstance(state_file, str) or not state_file):
            self.r.problem((*path, "state_file"), "expected a file path, or null for none")
            state_file = None
        heartbeat = self.r.duration(section.get("heartbeat_interval", "1s"),
                                    (*path, "heartbeat_interval"), high=60)
        if prefix is None or heartbeat is None:
            return None
        return FlagsSettings(redis_url=redis_url, key_prefix=prefix, state_file=state_file,
                             heartbeat_interval=heartbeat)

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
        keys = {"url", "connect_timeout", "read_timeout", "pool_size", "idle_timeout",
                "breaker", "health_check"}
        section = self.r.mapping(value, path, keys)
        valid_name = self.r.name(name, path)
        if section is None:
            return None
        url = section.get("url")
        host, port = self._http_url(url, (*path, "url"))
        connect = self.r.duration(section.get("connect_timeout", "1s"), (*path, "connect_timeout"))
        read = self.r.duration(section.get("read_timeout", "10s"), (*path, "read_timeout"))
        pool = self.r.integer(section.get("pool_size", 128), (*path, "pool_size"),
                              low=1, high=100_000)
        idle = self.r.duration(section.get("idle_timeout", "30s"), (*path, "idle_timeout"))
        breaker = self._breaker(section.get("breaker"), (*path, "breaker"))
        check = self._health_check(section.get("health_check"), (*path, "health_check"))
        if valid_name is None or host is None or None in (connect, read, pool, idle) or \
                breaker is None:
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
        )

    def _health_check(self, value: Any, path: KeyPath) -> HealthCheckConfig | bool | None:
        if value is None:
            return None
        section = self.r.mapping(value, path, {"path", "interval", "timeout"})
        if section is None:
            return False
        check_path = section.get("path", "/health")
        if not isinstance(check_path, str) or not check_path.startswith("/"):
            self.r.problem((*path, "path"), f"expected a path starting with '/', "
                                            f"got {check_path!r}")
            return False
        interval = self.r.duration(section.get("interval", "5s"), (*path, "interval"))
        timeout = self.r.duration(section.get("timeout", "1s"), (*path, "timeout"))
        if interval is None or timeout is None:
            return False
        return HealthCheckConfig(check_path, interval, timeout)

    def _breaker(self, value: Any, path: KeyPath) -> BreakerConfig | None:
        """Defaults suit a decision API at ~100 req/s: trip within a second of a hard
        failure, come back on its own after a few seconds (see README for the comparison)."""
        keys = {"window", "minimum_calls", "failure_rate", "consecutive_failures",
                "slow_call_duration", "slow_call_rate", "open_duration", "max_open_duration",
                "half_open_calls", "failure_statuses"}
        section = self.r.mapping(value, path, keys)
        if section is None:
            return None
        r = self.r

        def rate(key: str, default: float) -> float | None:
            number = section.get(key, default)
            if isinstance(number, bool) or not isinstance(number, int | float) or \
                    not 0 < number <= 1:
                r.problem((*path, key), f"expected a rate in (0, 1], got {number!r}")
                return None
            return float(number)

        statuses = section.get("failure_statuses", [500, 502, 503, 504])
        if not isinstance(statuses, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599
                for s in statuses):
            r.problem((*path, "failure_statuses"), "expected a list of HTTP status codes")
            statuses = None
        values = (
            r.duration(section.get("window", "10s"), (*path, "window"), high=3600),
            r.integer(section.get("minimum_calls", 20), (*path, "minimum_calls"), low=1,
                      high=1_000_000),
            rate("failure_rate", 0.5),
            r.integer(section.get("consecutive_failures", 5), (*path, "consecutive_failures"),
                      low=1, high=1_000_000),
            r.duration(section.get("slow_call_duration", "2s"), (*path, "slow_call_duration")),
            rate("slow_call_rate", 1.0),
            r.duration(section.get("open_duration", "5s"), (*path, "open_duration")),
            r.duration(section.get("max_open_duration", "60s"), (*path, "max_open_duration")),
            r.integer(section.get("half_open_calls", 5), (*path, "half_open_calls"), low=1,
                      high=10_000),
        )
        if None in values or statuses is None:
            return None
        (window, minimum, failure_rate, consecutive, slow_duration, slow_rate, open_for,
         max_open, half_open) = values
        return BreakerConfig(
            window=cast(float, window), minimum_calls=cast(int, minimum),
            failure_rate=cast(float, failure_rate), consecutive_failures=cast(int, consecutive),
            slow_call_duration=cast(float, slow_duration), slow_call_rate=cast(float, slow_rate),
            open_duration=cast(float, open_for),
            max_open_duration=max(cast(float, max_open), cast(float, open_for)),
            half_open_calls=cast(int, half_open), failure_statuses=frozenset(statuses))

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
            self.r.problem(path, "must not have a path or query: abgate forwards the request "
                                 f"path unchanged, got {value!r}")
            return None, None
        return parts.hostname, port or 80

    def _experiments(self, value: Any, upstreams: dict[str, UpstreamConfig] | None,
                     ) -> dict[str, ExperimentConfig] | None:
        path: KeyPath = ("experiments",)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.r.problem(path, "expected a mapping of experiment name to experiment")
            return None
        out: dict[str, ExperimentConfig] = {}
        for name, body in value.items():
            experiment = self._experiment(name, body, (*path, name), upstreams)
            if experiment is not None:
                out[name] = experiment
        return out

    def _experiment(self, name: str, value: Any, path: KeyPath,
                    upstreams: dict[str, UpstreamConfig] | None) -> ExperimentConfig | None:
        keys = {"control", "treatment", "sticky", "when_missing", "seed", "percentage",
                "fallback", "fallback_on_5xx", "shadow", "metrics"}
        section = self.r.mapping(value, path, keys)
        valid_name = self.r.name(name, path)
        if section is None:
            return None
        control = self._arm(section.get("control"), (*path, "control"), upstreams)
        treatment = self._arm(section.get("treatment"), (*path, "treatment"), upstreams)
        if control and treatment and control.name == treatment.name:
            self.r.problem((*path, "treatment"), f"arm name {treatment.name!r} is also the "
                                                 "control arm's; name the arms apart")
        sticky = self._sticky(section.get("sticky", []), (*path, "sticky"))
        when_missing = section.get("when_missing", "random")
        if when_missing not in _WHEN_MISSING:
            self.r.problem((*path, "when_missing"),
                           f"expected one of {', '.join(_WHEN_MISSING)}, got {when_missing!r}")
        seed = self.r.string(section.get("seed", name), (*path, "seed"))
        if "percentage" not in section:
            self.r.problem((*path, "percentage"), "required: the treatment arm's starting "
                                                  "percentage (0..100)")
            percentage = None
        else:
            percentage = self.r.percentage(section["percentage"], (*path, "percentage"))
        fallback = self.r.boolean(section.get("fallback", True), (*path, "fallback"))
        on_5xx = self.r.boolean(section.get("fallback_on_5xx", True), (*path, "fallback_on_5xx"))
        shadow = self._shadow(section.get("shadow"), (*path, "shadow"))
        metrics = self._metrics(section.get("metrics", []), (*path, "metrics"))
        if fallback is None or on_5xx is None or shadow is False or metrics is None:
            return None
        if (valid_name is None or control is None or treatment is None or sticky is None
                or when_missing not in _WHEN_MISSING or seed is None or percentage is None):
            return None
        return ExperimentConfig(
            name=name,
            control=control,
            treatment=treatment,
            sticky=sticky,
            when_missing=cast(WhenMissing, when_missing),
            seed=seed,
            percentage_bp=percentage,
            fallback=fallback,
            fallback_on_5xx=on_5xx,
            shadow=shadow if isinstance(shadow, ShadowConfig) else None,
            metrics=metrics,
        )

    def _metrics(self, value: Any, path: KeyPath) -> tuple[MetricConfig, ...] | None:
        if not isinstance(value, list):
            self.r.problem(path, "expected a list such as [{name: confidence, json: "
                                 "$.confidence}, {name: score, header: X-Score}]")
            return None
        out: list[MetricConfig] = []
        for index, item in enumerate(value):
            item_path = (*path, index)
            section = self.r.mapping(item, item_path, {"name", "json", "header"})
            if section is None:
                return None
            name = self.r.name(section.get("name"), (*item_path, "name"))
            if name in ("latency", "error") or name in {m.name for m in out}:
                self.r.problem((*item_path, "name"), f"{name!r} is taken (latency and error "
                                                     "are built in; names must differ)")
                return None
            if ("json" in section) == ("header" in section):
                self.r.problem(item_path, "needs exactly one of json or header")
                return None
            json_path = header = None
            if "json" in section:
                json_path = _json_path(section["json"])
                if json_path is None:
                    self.r.problem((*item_path, "json"),
                                   f"not a JSON path like $.confidence: {section['json']!r}")
                    return None
            else:
                header = self.r.header_name(section["header"], (*item_path, "header"))
            if name is None or (json_path is None and header is None):
                return None
            out.append(MetricConfig(name, json_path, header))
        return tuple(out)

    def _shadow(self, value: Any, path: KeyPath) -> ShadowConfig | bool | None:
        """None: no shadow; False: invalid (reported)."""
        if value is None:
            return None
        section = self.r.mapping(value, path, {"percentage", "compare", "max_in_flight"})
        if section is None:
            return False
        percentage = self.r.percentage(section.get("percentage", 100), (*path, "percentage"))
        limit = self.r.integer(section.get("max_in_flight", 100), (*path, "max_in_flight"),
                               low=1, high=100_000)
        compare = section.get("compare", [])
        paths: list[tuple[str, JsonPath]] = []
        if not isinstance(compare, list):
            self.r.problem((*path, "compare"), "expected a list of JSON paths such as "
                                               "['$.decision']")
            return False
        for index, text in enumerate(compare):
            parsed = _json_path(text)
            if parsed is None:
                self.r.problem((*path, "compare", index),
                               f"not a JSON path like $.decision or $.items[0].id: {text!r}")
                return False
            paths.append((text, parsed))
        if percentage is None or limit is None:
            return False
        return ShadowConfig(percentage_bp=percentage, compare=tuple(paths), max_in_flight=limit)

    def _arm(self, value: Any, path: KeyPath,
             upstreams: dict[str, UpstreamConfig] | None) -> ArmConfig | None:
        if isinstance(value, str):
            name, upstream = value, value
        elif isinstance(value, dict):
            section = self.r.mapping(value, path, {"name", "upstream"}) or {}
            valid_upstream = self.r.name(section.get("upstream"), (*path, "upstream"))
            if valid_upstream is None:
                return None
            upstream = valid_upstream
            name = section.get("name", upstream)
        else:
            self.r.problem(path, "required: an upstream name, or {name: ARM, upstream: UPSTREAM}")
            return None
        if self.r.name(name, path) is None:
            return None
        if upstream not in self.upstream_names:
            self.r.problem(path, f"unknown upstream {upstream!r}")
            return None
        return ArmConfig(name=name, upstream=upstream)

    def _sticky(self, value: Any, path: KeyPath) -> tuple[StickySource, ...] | None:
        if not isinstance(value, list):
            self.r.problem(path, "expected a list such as [{header: X-User-Id}, client_ip]")
            return None
        out: list[StickySource] = []
        for index, item in enumerate(value):
            item_path = (*path, index)
            if item == "client_ip":
                out.append(StickySource("client_ip", ""))
                continue
            if not isinstance(item, dict) or len(item) != 1:
                self.r.problem(item_path, "expected one of {header: NAME}, {cookie: NAME}, "
                                          "{query: NAME} or client_ip")
                continue
            (kind, name), = item.items()
            if kind not in _STICKY_KINDS:
                self.r.problem((*item_path, kind), "unknown sticky key source (expected header, "
                                                   "cookie, query or client_ip)")
                continue
            valid = (self.r.header_name(name, (*item_path, kind)) if kind == "header"
                     else self.r.string(name, (*item_path, kind)))
            if valid is not None:
                out.append(StickySource(kind, valid.lower() if kind == "header" else valid))
        return tuple(out)

    def _routes(self, value: Any, upstreams: dict[str, UpstreamConfig] | None,
                experiments: dict[str, ExperimentConfig] | None) -> tuple[RouteConfig, ...] | None:
        path: KeyPath = ("routes",)
        if not isinstance(value, list) or not value:
            self.r.problem(path, "at least one route is required")
            return None
        out = []
        for index, item in enumerate(value):
            route = self._route(index, item, (*path, index), upstreams, experiments)
            if route is not None:
                out.append(route)
        return tuple(out)

    def _route(self, index: int, value: Any, path: KeyPath,
               upstreams: dict[str, UpstreamConfig] | None,
               experiments: dict[str, ExperimentConfig] | None) -> RouteConfig | None:
        keys = {"name", "prefix", "regex", "methods", "experiment", "upstream", "replayable"}
        section = self.r.mapping(value, path, keys)
        if section is None:
            return None
        ok = True
        name = self.r.string(section.get("name", f"route-{index}"), (*path, "name"))
        prefix, regex = section.get("prefix"), None
        if (prefix is None) == ("regex" not in section):
            self.r.problem(path, "needs exactly one of prefix or regex")
            ok = False
        elif prefix is not None:
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                self.r.problem((*path, "prefix"),
                               f"must be a path starting with '/', got {prefix!r}")
                ok = False
        else:
            pattern = self.r.string(section["regex"], (*path, "regex"))
            try:
                regex = re.compile(pattern) if pattern is not None else None
            except re.error as exc:
                self.r.problem((*path, "regex"), f"invalid regular expression: {exc}")
            ok = ok and regex is not None
        methods = self._methods(section.get("methods"), (*path, "methods"))
        experiment, upstream = section.get("experiment"), section.get("upstream")
        if (experiment is None) == (upstream is None):
            self.r.problem(path, "needs exactly one of experiment or upstream")
            ok = False
        elif experiment is not None and experiment not in self.experiment_names:
            self.r.problem((*path, "experiment"), f"unknown experiment {experiment!r}")
            ok = False
        elif upstream is not None and upstream not in self.upstream_names:
            self.r.problem((*path, "upstream"), f"unknown upstream {upstream!r}")
            ok = False
        replayable = self.r.boolean(section.get("replayable", False), (*path, "replayable"))
        if not ok or name is None or methods == _BAD_METHODS or replayable is None:
            return None
        return RouteConfig(name=name, prefix=prefix, regex=regex, methods=methods,
                           experiment=experiment, upstream=upstream, replayable=replayable)

    def _methods(self, value: Any, path: KeyPath) -> frozenset[str] | None:
        """None: any method; `_BAD_METHODS` when invalid (a problem was reported)."""
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            self.r.problem(path, "expected a list of HTTP methods such as [GET, POST]")
            return _BAD_METHODS
        methods = set()
        for index, method in enumerate(value):
            if not isinstance(method, str) or not _METHOD.match(method.upper()):
                self.r.problem((*path, index), f"not an HTTP method: {method!r}")
                return _BAD_METHODS
            methods.add(method.upper())
        return frozenset(methods)
