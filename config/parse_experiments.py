"""Configuration: experiments, from their declarations in `config.schema_experiments`; the
rollout plan of each is read with it (`config.parse_rollout`)."""

from __future__ import annotations

from typing import Any, get_args

from abgate.config.fields import Reader
from abgate.config.model import (
    ArmConfig,
    Direction,
    ExperimentConfig,
    MetricConfig,
    RolloutPlan,
    ShadowConfig,
    StickySource,
)
from abgate.config.parse_rollout import read_plan
from abgate.config.schema_experiments import (
    EXPERIMENTS,
    ArmSection,
    ExperimentSection,
    ExperimentSections,
    MetricSection,
    StickyItem,
)
from abgate.config.settings import build, validate
from abgate.config.values import Names
from abgate.config.yaml_lines import KeyPath

DIRECTIONS = get_args(Direction)


def _rates(declared: dict[Any, Any]) -> dict[str, str | None]:
    """The binary metrics declared, each with its direction (None where refused)."""
    return {
        str(name): body.get("direction") if body.get("direction") in DIRECTIONS else None
        for name, body in declared.items()
        if isinstance(body, dict) and body.get("type") == "binary"
    }


class ExperimentSchema:
    r: Reader
    upstream_names: set[str]
    experiment_names: set[str]

    def _experiments(self, value: Any) -> dict[str, ExperimentConfig] | None:
        path: KeyPath = ("experiments",)
        names = Names(frozenset(self.upstream_names), frozenset(self.experiment_names))
        sections = validate(self.r, EXPERIMENTS, ExperimentSections, value, path, names)
        # A plan is read with its experiment's metrics, even when something else in the
        # experiment was refused: its problems are listed with the others.
        plans: dict[str, RolloutPlan | None] = {}
        keys_ok = True
        for name, body in value.items() if isinstance(value, dict) else ():
            given = body if isinstance(body, dict) else {}
            keys_ok = self._metric_keys(given.get("metrics"), (*path, name, "metrics")) and keys_ok
            if given.get("rollout") is None:
                plans[name] = None
                continue
            # The metrics it declares, by name: a plan naming one whose settings were
            # refused is read too (its problems listed with that metric's).
            declared = given.get("metrics") or {}
            if isinstance(declared, dict):
                where = (*path, name, "rollout")
                plans[name] = read_plan(
                    self.r, given["rollout"], where, map(str, declared), _rates(declared)
                )
        if sections is None or not keys_ok:
            return None
        out = {name: _experiment(name, section, plans[name]) for name, section in sections.items()}
        if any(sections[name].rollout is not None and plans[name] is None for name in sections):
            return None
        return out

    def _metric_keys(self, value: Any, path: KeyPath) -> bool:
        """Which keys of a metric go together: where a value is read (json or header) or
        none (outcomes, which alone may wait to mature)."""
        ok = True
        for name, body in value.items() if isinstance(value, dict) else ():
            given = body if isinstance(body, dict) else {}
            from_answer = "json" in given or "header" in given
            if "json" in given and "header" in given:
                self.r.problem((*path, name), "give json or header, not both")
                ok = False
            elif from_answer and "maturity" in given:
                self.r.problem(
                    (*path, name, "maturity"),
                    "applies to outcomes posted after the decision; "
                    f"{name} is read from each answer",
                )
                ok = False
        return ok


def _experiment(
    name: str, section: ExperimentSection, plan: RolloutPlan | None
) -> ExperimentConfig:
    shadow = section.shadow
    return build(
        ExperimentConfig,
        section,
        name=name,
        control=_arm(section.control),
        treatment=_arm(section.treatment),
        sticky=tuple(_sticky(item) for item in section.sticky),
        seed=section.seed or name,
        percentage_bp=section.percentage,
        shadow=ShadowConfig(shadow.percentage, shadow.compare, shadow.max_in_flight)
        if shadow is not None
        else None,
        metrics=_metrics(section.metrics),
        rollout=plan,
    )


def _arm(section: ArmSection) -> ArmConfig:
    return ArmConfig(section.arm_name, section.upstream)


def _sticky(item: StickyItem) -> StickySource:
    if item.header is not None:
        return StickySource("header", item.header.lower())
    if item.cookie is not None:
        return StickySource("cookie", item.cookie)
    if item.query is not None:
        return StickySource("query", item.query)
    return StickySource("client_ip", "")


def _metrics(sections: dict[str, MetricSection]) -> tuple[MetricConfig, ...]:
    return tuple(
        MetricConfig(
            name,
            section.type,
            section.direction,
            section.json_path,
            section.header,
            section.maturity,
        )
        for name, section in sections.items()
    )
