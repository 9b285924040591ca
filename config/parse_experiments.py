"""Configuration schema: experiments, their arms, sticky keys, shadow mode and metrics."""

from __future__ import annotations

import re
from typing import Any, cast

from abgate.config.fields import Reader
from abgate.config.model import (
    BUILT_IN_METRICS,
    ArmConfig,
    Direction,
    ExperimentConfig,
    JsonPath,
    MetricConfig,
    MetricType,
    ShadowConfig,
    StickySource,
    UpstreamConfig,
    WhenMissing,
)
from abgate.config.parse_rollout import read_plan
from abgate.config.yaml_lines import KeyPath

_STICKY_KINDS = ("header", "cookie", "query")
_WHEN_MISSING: tuple[WhenMissing, ...] = ("random", "control", "client_ip")
_METRIC_TYPES = ("binary", "continuous")
_DIRECTIONS = ("higher", "lower")
_JSON_PATH = re.compile(r"^\$((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\])+)$")
_JSON_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


def _json_path(text: Any) -> JsonPath | None:
    """`$.a.b[0]` -> ("a", "b", 0): the small JSONPath subset shadow comparison needs."""
    if not isinstance(text, str):
        return None
    match = _JSON_PATH.match(text)
    if match is None:
        return None
    return tuple(name if name else int(index) for name, index in _JSON_STEP.findall(match.group(1)))


class ExperimentSchema:
    r: Reader
    upstream_names: set[str]

    def _experiments(
        self,
        value: Any,
        upstreams: dict[str, UpstreamConfig] | None,
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

    def _experiment(
        self, name: str, value: Any, path: KeyPath, upstreams: dict[str, UpstreamConfig] | None
    ) -> ExperimentConfig | None:
        keys = {
            "control",
            "treatment",
            "sticky",
            "when_missing",
            "seed",
            "percentage",
            "fallback",
            "fallback_on_5xx",
            "shadow",
            "metrics",
            "rollout",
        }
        section = self.r.mapping(value, path, keys)
        valid_name = self.r.name(name, path)
        if section is None:
            return None
        control = self._arm(section.get("control"), (*path, "control"), upstreams)
        treatment = self._arm(section.get("treatment"), (*path, "treatment"), upstreams)
        if control and treatment and control.name == treatment.name:
            self.r.problem(
                (*path, "treatment"),
                f"arm name {treatment.name!r} is also the control arm's; name the arms apart",
            )
        sticky = self._sticky(section.get("sticky", []), (*path, "sticky"))
        when_missing = section.get("when_missing", "random")
        if when_missing not in _WHEN_MISSING:
            self.r.problem(
                (*path, "when_missing"),
                f"expected one of {', '.join(_WHEN_MISSING)}, got {when_missing!r}",
            )
        seed = self.r.string(section.get("seed", name), (*path, "seed"))
        if "percentage" not in section:
            self.r.problem(
                (*path, "percentage"), "required: the treatment arm's starting percentage (0..100)"
            )
            percentage = None
        else:
            percentage = self.r.percentage(section["percentage"], (*path, "percentage"))
        fallback = self.r.boolean(section.get("fallback", True), (*path, "fallback"))
        on_5xx = self.r.boolean(section.get("fallback_on_5xx", True), (*path, "fallback_on_5xx"))
        shadow = self._shadow(section.get("shadow"), (*path, "shadow"))
        metrics = self._metrics(section.get("metrics", {}), (*path, "metrics"))
        if fallback is None or on_5xx is None or shadow is False or metrics is None:
            return None
        rollout = None
        if section.get("rollout") is not None:
            rollout = read_plan(self.r, section["rollout"], (*path, "rollout"), metrics)
            if rollout is None:
                return None
        if (
            valid_name is None
            or control is None
            or treatment is None
            or sticky is None
            or when_missing not in _WHEN_MISSING
            or seed is None
            or percentage is None
        ):
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
            rollout=rollout,
        )

    def _metrics(self, value: Any, path: KeyPath) -> tuple[MetricConfig, ...] | None:
        example = (
            "a mapping of metric name to {type: binary|continuous, direction: "
            "higher|lower}, plus json: $.field or header: NAME to read it from each "
            "answer"
        )
        if not isinstance(value, dict):
            self.r.problem(path, f"expected {example}")
            return None
        out: list[MetricConfig] = []
        for name, body in value.items():
            item_path = (*path, name)
            section = self.r.mapping(body, item_path, {"type", "direction", "json", "header"})
            if section is None or self.r.name(name, item_path) is None:
                return None
            if name in BUILT_IN_METRICS:
                self.r.problem(
                    item_path,
                    f"{name!r} is built in (latency: continuous, lower "
                    "is better; error: binary, lower is better)",
                )
                return None
            kind, direction = section.get("type"), section.get("direction")
            if kind not in _METRIC_TYPES:
                self.r.problem(
                    (*item_path, "type"), f"required: binary or continuous, got {kind!r}"
                )
            if direction not in _DIRECTIONS:
                self.r.problem(
                    (*item_path, "direction"),
                    f"required: higher or lower (which way is better), got {direction!r}",
                )
            if "json" in section and "header" in section:
                self.r.problem(item_path, "give json or header, not both")
                return None
            json_path = header = None
            if "json" in section:
                json_path = _json_path(section["json"])
                if json_path is None:
                    self.r.problem(
                        (*item_path, "json"),
                        f"not a JSON path like $.confidence: {section['json']!r}",
                    )
                    return None
            elif "header" in section:
                header = self.r.header_name(section["header"], (*item_path, "header"))
                if header is None:
                    return None
            if kind not in _METRIC_TYPES or direction not in _DIRECTIONS:
                return None
            out.append(
                MetricConfig(
                    name, cast(MetricType, kind), cast(Direction, direction), json_path, header
                )
            )
        return tuple(out)

    def _shadow(self, value: Any, path: KeyPath) -> ShadowConfig | bool | None:
        """None: no shadow; False: invalid (reported)."""
        if value is None:
            return None
        section = self.r.mapping(value, path, {"percentage", "compare", "max_in_flight"})
        if section is None:
            return False
        percentage = self.r.percentage(section.get("percentage", 100), (*path, "percentage"))
        limit = self.r.integer(
            section.get("max_in_flight", 100), (*path, "max_in_flight"), low=1, high=100_000
        )
        compare = section.get("compare", [])
        paths: list[tuple[str, JsonPath]] = []
        if not isinstance(compare, list):
            self.r.problem(
                (*path, "compare"), "expected a list of JSON paths such as ['$.decision']"
            )
            return False
        for index, text in enumerate(compare):
            parsed = _json_path(text)
            if parsed is None:
                self.r.problem(
                    (*path, "compare", index),
                    f"not a JSON path like $.decision or $.items[0].id: {text!r}",
                )
                return False
            paths.append((text, parsed))
        if percentage is None or limit is None:
            return False
        return ShadowConfig(percentage_bp=percentage, compare=tuple(paths), max_in_flight=limit)

    def _arm(
        self, value: Any, path: KeyPath, upstreams: dict[str, UpstreamConfig] | None
    ) -> ArmConfig | None:
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
                self.r.problem(
                    item_path,
                    "expected one of {header: NAME}, {cookie: NAME}, {query: NAME} or client_ip",
                )
                continue
            ((kind, name),) = item.items()
            if kind not in _STICKY_KINDS:
                self.r.problem(
                    (*item_path, kind),
                    "unknown sticky key source (expected header, cookie, query or client_ip)",
                )
                continue
            valid = (
                self.r.header_name(name, (*item_path, kind))
                if kind == "header"
                else self.r.string(name, (*item_path, kind))
            )
            if valid is not None:
                out.append(StickySource(kind, valid.lower() if kind == "header" else valid))
        return tuple(out)
