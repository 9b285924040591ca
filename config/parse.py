"""The configuration schema: YAML text -> a validated, frozen `Config`, or every problem at once."""

from __future__ import annotations

import re
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from abgate.config.errors import ConfigError
from abgate.config.export import mask_url
from abgate.config.fields import Reader
from abgate.config.layers import read_layered
from abgate.config.model import (
    Config,
    ControlSettings,
    ExperimentConfig,
    FlagsSettings,
    HistorySettings,
    Listen,
    ProxySettings,
    RedisSettings,
    RouteConfig,
    UpstreamConfig,
)
from abgate.config.parse_connections import ConnectionSchema
from abgate.config.parse_experiments import ExperimentSchema
from abgate.config.parse_upstreams import UpstreamSchema
from abgate.config.yaml_lines import KeyPath, LocatedDocument, load_located

_METHOD = re.compile(r"^[A-Z]{1,20}$")
_BAD_METHODS: frozenset[str] = frozenset({"<invalid>"})


def load_config(path: str | Path) -> Config:
    """Read and validate a configuration file (merged over the file it `extends`, if any:
    config/layers.py); raises ConfigError listing every problem."""
    return _validate(read_layered(path), str(path))


def parse_config(text: str, source: str = "<config>") -> Config:
    return _validate(load_located(text, source), source)


def _validate(doc: LocatedDocument, source: str) -> Config:
    reader = Reader(doc)
    config = _Schema(reader, source).build(doc.value)
    if reader.problems or config is None:
        raise ConfigError(source, reader.problems)
    return config


class _Schema(UpstreamSchema, ExperimentSchema, ConnectionSchema):
    """The top level, listeners, flags and routes; upstreams, experiments and connections to
    the stores in their own modules (`config.parse_upstreams`, `config.parse_experiments`,
    `config.parse_connections`)."""

    def __init__(self, reader: Reader, source: str) -> None:
        self.r = reader
        self.source = source
        # Names declared in the file: references are checked against these, so one bad
        # upstream is reported once, not again by everything that refers to it.
        self.upstream_names: set[str] = set()
        self.experiment_names: set[str] = set()

    def build(self, root: Any) -> Config | None:
        top = self.r.mapping(
            root,
            (),
            {"proxy", "control", "flags", "upstreams", "routes", "experiments", "history"},
        )
        if top is None:
            return None
        for key, names in (
            ("upstreams", self.upstream_names),
            ("experiments", self.experiment_names),
        ):
            if isinstance(top.get(key), dict):
                names.update(top[key])
        proxy = self._proxy(top.get("proxy"))
        control = self._control(top.get("control"))
        flags = self._flags(top.get("flags"))
        history = self._history(top.get("history"))
        upstreams = self._upstreams(top.get("upstreams"))
        experiments = self._experiments(top.get("experiments"), upstreams)
        routes = self._routes(top.get("routes"), upstreams, experiments)
        if proxy and control and proxy.listen == control.listen and proxy.listen.port != 0:
            self.r.problem(("control", "listen"), "is the same address as proxy.listen")
        if proxy is None or control is None or upstreams is None or routes is None:
            return None
        if experiments is None or flags is None or history is None:
            return None
        return Config(
            source=self.source,
            proxy=proxy,
            control=control,
            flags=flags,
            upstreams=MappingProxyType(upstreams),
            routes=routes,
            experiments=MappingProxyType(experiments),
            history=history,
        )

    def _proxy(self, value: Any) -> ProxySettings | None:
        path: KeyPath = ("proxy",)
        keys = {
            "listen",
            "admin_listen",
            "max_body_size",
            "buffer_body_size",
            "shutdown_timeout",
            "random_seed",
            "retry_budget",
            "measurements",
            "client_header_timeout",
            "client_keepalive_timeout",
            "client_body_timeout",
            "max_header_size",
            "max_connections",
        }
        section = self.r.mapping(value, path, keys)
        if section is None:
            return None
        listen = self.r.listen(section.get("listen", "127.0.0.1:8080"), (*path, "listen"))
        admin = self.r.listen(
            section.get("admin_listen", "127.0.0.1:9180"), (*path, "admin_listen")
        )
        max_body = self.r.size(section.get("max_body_size", "10MiB"), (*path, "max_body_size"))
        buffered = self.r.size(
            section.get("buffer_body_size", "64KiB"), (*path, "buffer_body_size")
        )
        if max_body is not None and buffered is not None and buffered > max_body:
            self.r.problem(
                (*path, "buffer_body_size"),
                f"{buffered} bytes is more than max_body_size ({max_body} bytes): "
                "a body is never buffered beyond what may be sent at all",
            )
            buffered = None
        grace = self.r.duration(
            section.get("shutdown_timeout", "10s"), (*path, "shutdown_timeout"), high=3600
        )
        seed_value = section.get("random_seed")
        seed = None
        if seed_value is not None:
            seed = self.r.integer(seed_value, (*path, "random_seed"), low=0, high=2**63 - 1)
        budget = (
            self.r.mapping(
                section.get("retry_budget"), (*path, "retry_budget"), {"ratio", "min_per_second"}
            )
            or {}
        )
        ratio = budget.get("ratio", 0.2)
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            self.r.problem((*path, "retry_budget", "ratio"), f"expected 0..1, got {ratio!r}")
            ratio = None
        floor = budget.get("min_per_second", 5)
        if isinstance(floor, bool) or not isinstance(floor, int | float) or floor < 0:
            self.r.problem(
                (*path, "retry_budget", "min_per_second"), f"expected a number >= 0, got {floor!r}"
            )
            floor = None
        measurements = self.r.boolean(section.get("measurements", True), (*path, "measurements"))
        header_timeout = self.r.duration(
            section.get("client_header_timeout", "10s"), (*path, "client_header_timeout"), high=3600
        )
        keepalive = self.r.duration(
            section.get("client_keepalive_timeout", "75s"),
            (*path, "client_keepalive_timeout"),
            high=86400,
        )
        body_timeout = self.r.duration(
            section.get("client_body_timeout", "60s"), (*path, "client_body_timeout"), high=3600
        )
        header_size = self.r.size(
            section.get("max_header_size", "64KiB"), (*path, "max_header_size"), low=1024
        )
        connections = self.r.integer(
            section.get("max_connections", 4096), (*path, "max_connections"), low=1, high=1_000_000
        )
        if None in (
            listen,
            admin,
            max_body,
            buffered,
            grace,
            ratio,
            floor,
            measurements,
            header_timeout,
            keepalive,
            body_timeout,
            header_size,
            connections,
        ):
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
            client_header_timeout=cast(float, header_timeout),
            client_keepalive_timeout=cast(float, keepalive),
            client_body_timeout=cast(float, body_timeout),
            max_header_size=cast(int, header_size),
            max_connections=cast(int, connections),
        )

    def _control(self, value: Any) -> ControlSettings | None:
        path: KeyPath = ("control",)
        section = self.r.mapping(
            value, path, {"listen", "default_experiment", "groups", "report_time_scale"}
        )
        if section is None:
            return None
        listen = self.r.listen(section.get("listen", "127.0.0.1:8092"), (*path, "listen"))
        default = section.get("default_experiment")
        if default is not None and default not in self.experiment_names:
            known = ", ".join(sorted(self.experiment_names)) or "none"
            self.r.problem(
                (*path, "default_experiment"),
                f"unknown experiment {default!r} (experiments: {known})",
            )
            return None
        groups = self._groups(section.get("groups"), (*path, "groups"))
        scale = section.get("report_time_scale", 1)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 1 <= scale <= 1e7:
            self.r.problem(
                (*path, "report_time_scale"), f"expected a number from 1 to 1e7, got {scale!r}"
            )
            return None
        if listen is None or groups is None:
            return None
        return ControlSettings(listen, default, MappingProxyType(groups), float(scale))

    def _groups(self, value: Any, path: KeyPath) -> dict[str, tuple[str, ...]] | None:
        """Group name -> experiments; a group may not take an experiment's name."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.r.problem(path, "expected a mapping of group name to a list of experiments")
            return None
        groups: dict[str, tuple[str, ...]] = {}
        ok = True
        for name, members in value.items():
            where = (*path, name)
            if self.r.name(name, where) is None:
                ok = False
            elif name in self.experiment_names:
                self.r.problem(where, "is an experiment's name: a group needs its own")
                ok = False
            elif not isinstance(members, list) or not members:
                self.r.problem(where, "expected a non-empty list of experiment names")
                ok = False
            else:
                unknown = [m for m in members if m not in self.experiment_names]
                if unknown:
                    self.r.problem(where, f"unknown experiment(s): {unknown}")
                    ok = False
                groups[name] = tuple(dict.fromkeys(members))
        return groups if ok else None

    def _flags(self, value: Any) -> FlagsSettings | None:
        path: KeyPath = ("flags",)
        section = self.r.mapping(
            value, path, {"redis_url", "redis", "key_prefix", "state_file", "heartbeat_interval"}
        )
        if section is None:
            return None
        # redis_url: the short form of redis: {url: ...}.
        redis, redis_ok = None, True
        if section.get("redis_url") is not None and section.get("redis") is not None:
            self.r.problem(path, "redis_url and redis: give one of them")
            redis_ok = False
        elif section.get("redis_url") is not None:
            url = self._redis_url(section["redis_url"], (*path, "redis_url"))
            redis, redis_ok = (RedisSettings(url=url), True) if url else (None, False)
        elif section.get("redis") is not None:
            redis, redis_ok = self._redis(section["redis"], (*path, "redis"))
        prefix = self.r.name(section.get("key_prefix", "abgate"), (*path, "key_prefix"))
        state_file = section.get("state_file", ".abgate/flags.json")
        if state_file is not None and (not isinstance(state_file, str) or not state_file):
            self.r.problem((*path, "state_file"), "expected a file path, or null for none")
            state_file = None
        heartbeat = self.r.duration(
            section.get("heartbeat_interval", "1s"), (*path, "heartbeat_interval"), high=60
        )
        if prefix is None or heartbeat is None or not redis_ok:
            return None
        return FlagsSettings(
            redis=redis,
            key_prefix=prefix,
            state_file=state_file,
            heartbeat_interval=heartbeat,
        )

    def _history(self, value: Any) -> HistorySettings | None:
        path: KeyPath = ("history",)
        section = self.r.mapping(
            value,
            path,
            {"postgres_url", "password_env", "password_file", "retention", "sample", "buffer"},
        )
        if section is None:
            return None
        url = section.get("postgres_url")
        if url is not None and (
            not isinstance(url, str) or not url.startswith(("postgres://", "postgresql://"))
        ):
            shown = mask_url(url) if isinstance(url, str) else url
            self.r.problem((*path, "postgres_url"), f"expected a postgresql:// URL, got {shown!r}")
            return None
        retention = self.r.duration(
            section.get("retention", "90d"), (*path, "retention"), high=3650 * 86_400.0
        )
        if retention is not None and retention < 86_400:
            self.r.problem((*path, "retention"), "at least 1d (history is kept in whole days)")
            return None
        sample = section.get("sample", 1.0)
        if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 < sample <= 1:
            self.r.problem((*path, "sample"), f"a share above 0 and at most 1, got {sample!r}")
            return None
        buffer = self.r.integer(
            section.get("buffer", 200_000), (*path, "buffer"), low=1000, high=10_000_000
        )
        before = len(self.r.problems)
        password = self._secret(section, path)
        if retention is None or buffer is None or len(self.r.problems) > before:
            return None
        return HistorySettings(url, retention, float(sample), buffer, password)

    def _routes(
        self,
        value: Any,
        upstreams: dict[str, UpstreamConfig] | None,
        experiments: dict[str, ExperimentConfig] | None,
    ) -> tuple[RouteConfig, ...] | None:
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

    def _route(
        self,
        index: int,
        value: Any,
        path: KeyPath,
        upstreams: dict[str, UpstreamConfig] | None,
        experiments: dict[str, ExperimentConfig] | None,
    ) -> RouteConfig | None:
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
                self.r.problem(
                    (*path, "prefix"), f"must be a path starting with '/', got {prefix!r}"
                )
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
        return RouteConfig(
            name=name,
            prefix=prefix,
            regex=regex,
            methods=methods,
            experiment=experiment,
            upstream=upstream,
            replayable=replayable,
        )

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
