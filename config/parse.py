"""YAML text -> a validated, frozen `Config`, or every problem at once: each section validated
against its declarations (`config.schema*`), then the checks across settings and sections."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from abgate.config.errors import ConfigError, Problem
from abgate.config.fields import Reader, shown
from abgate.config.layers import BaseRefused, read_layered
from abgate.config.model import (
    Config,
    ControlSettings,
    HistorySettings,
    ProxySettings,
    RouteConfig,
)
from abgate.config.parse_connections import ConnectionSchema, check_one_password
from abgate.config.parse_experiments import ExperimentSchema
from abgate.config.parse_upstreams import UpstreamSchema
from abgate.config.schema import (
    CONTROL,
    HISTORY,
    PROXY,
    ROUTE,
    ControlSection,
    HistorySection,
    ProxySection,
    RouteSection,
)
from abgate.config.schema_experiments import StickyItem
from abgate.config.settings import build, validate
from abgate.config.values import Names
from abgate.config.yaml_lines import KeyPath, LocatedDocument, load_located


def load_config(
    path: str | Path, *, check_exposure: bool = False, control_token: str | None = None
) -> Config:
    """Read and validate a configuration file (merged over the file it `extends`, if any:
    config/layers.py); raises ConfigError listing every problem. `check_exposure`: the
    control API's listen address is judged too, as a server started with `control_token`
    would (`ControlSettings.exposure_problem`), with the other problems."""
    exposure = Exposure(control_token) if check_exposure else None
    try:
        doc = read_layered(path)
    except BaseRefused as exc:
        raise ConfigError(str(path), [*exc.problems, *_own_problems(exc.own)]) from exc
    return _validate(doc, str(path), exposure)


def _own_problems(own: LocatedDocument) -> list[Problem]:
    """What a file whose base was refused can be told alone: what its YAML refused, and its
    unknown keys (the rest depends on what the base would have set)."""
    reader = Reader(own)
    _Schema(reader, "", None, ()).build(own.value)
    return [
        problem
        for problem in reader.problems
        if problem in own.problems
        or problem.message.startswith("unknown key")
        or problem.message == StickyItem.unknown_key
    ]


def parse_config(text: str, source: str = "<config>") -> Config:
    return _validate(load_located(text, source), source)


class Exposure(NamedTuple):
    """The control API's token a configuration is judged with (none: no token)."""

    control_token: str | None


def _validate(doc: LocatedDocument, source: str, exposure: Exposure | None = None) -> Config:
    reader = Reader(doc)
    config = _Schema(reader, source, exposure, doc.bases).build(doc.value)
    if reader.problems or config is None:
        raise ConfigError(source, reader.problems)
    return config


class _Schema(UpstreamSchema, ExperimentSchema, ConnectionSchema):
    """The top level, proxy, control, history and routes; upstreams, experiments (with their
    rollout plans) and flags in their own modules (`config.parse_upstreams`,
    `config.parse_experiments`, `config.parse_connections`)."""

    def __init__(
        self, reader: Reader, source: str, exposure: Exposure | None, bases: tuple[str, ...]
    ) -> None:
        self.r = reader
        self.source = source
        self.exposure = exposure
        self.bases = bases
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
        experiments = self._experiments(top.get("experiments"))
        routes = self._routes(top.get("routes"))
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
            bases=self.bases,
        )

    def _proxy(self, value: Any) -> ProxySettings | None:
        section = validate(self.r, PROXY, ProxySection, value, ("proxy",))
        if section is None:
            return None
        if section.buffer_body_size > section.max_body_size:
            self.r.problem(
                ("proxy", "buffer_body_size"),
                f"{section.buffer_body_size} bytes is more than max_body_size "
                f"({section.max_body_size} bytes): a body is never buffered beyond what may "
                "be sent at all",
            )
            return None
        return build(
            ProxySettings,
            section,
            admin=section.admin_listen,
            retry_budget_ratio=section.retry_budget.ratio,
            retry_min_per_second=section.retry_budget.min_per_second,
        )

    def _control(self, value: Any) -> ControlSettings | None:
        path: KeyPath = ("control",)
        section = validate(self.r, CONTROL, ControlSection, value, path)
        if section is None:
            return None
        default = section.default_experiment
        if default is not None and default not in self.experiment_names:
            known = ", ".join(sorted(self.experiment_names)) or "none"
            self.r.problem(
                (*path, "default_experiment"),
                f"unknown experiment {shown(default)} (experiments: {known})",
            )
            return None
        ok = True
        for name, members in section.groups.items():
            where = (*path, "groups", name)
            unknown = [m for m in members if m not in self.experiment_names]
            if name in self.experiment_names:
                self.r.problem(where, "is an experiment's name: a group needs its own")
                ok = False
            elif unknown:
                self.r.problem(where, f"unknown experiment(s): {unknown}")
                ok = False
        if not ok:
            return None
        settings = build(ControlSettings, section, groups=MappingProxyType(dict(section.groups)))
        refused = self.exposure and settings.exposure_problem(self.exposure.control_token)
        if refused:  # what `abgate run` and `abgate control` would refuse
            self.r.problem((*path, "listen"), refused)
            return None
        return settings

    def _history(self, value: Any) -> HistorySettings | None:
        path: KeyPath = ("history",)
        section = validate(self.r, HISTORY, HistorySection, value, path)
        if not check_one_password(self.r, value, path) or section is None:
            return None
        return build(HistorySettings, section, password=section.password)

    def _routes(self, value: Any) -> tuple[RouteConfig, ...] | None:
        path: KeyPath = ("routes",)
        if not isinstance(value, list) or not value:
            self.r.problem(path, "at least one route is required")
            return None
        names = Names(frozenset(self.upstream_names), frozenset(self.experiment_names))
        routes = [
            self._route(index, item, (*path, index), names) for index, item in enumerate(value)
        ]
        return tuple(route for route in routes if route is not None)

    def _route(self, index: int, value: Any, path: KeyPath, names: Names) -> RouteConfig | None:
        section = validate(self.r, ROUTE, RouteSection, value, path, names)
        given = value if isinstance(value, dict) else {}
        # Which keys are given, whatever their values: checked even when a value is refused.
        matchers_ok = (given.get("prefix") is None) != ("regex" not in given)
        targets_ok = (given.get("experiment") is None) != (given.get("upstream") is None)
        if isinstance(value, dict) and not matchers_ok:
            self.r.problem(path, "needs exactly one of prefix or regex")
        if isinstance(value, dict) and not targets_ok:
            self.r.problem(path, "needs exactly one of experiment or upstream")
        if section is None or not matchers_ok or not targets_ok:
            return None
        return build(
            RouteConfig,
            section,
            name=section.name or f"route-{index}",
            methods=frozenset(section.methods) if section.methods is not None else None,
        )
