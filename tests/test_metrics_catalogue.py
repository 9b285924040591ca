"""The metrics catalogue (config/metrics_catalogue.py) is the one place a family is named: the
names the dashboards and alerts read are all declared there, and no other module spells one."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from abgate.config import metrics_catalogue
from abgate.config.metrics_catalogue import FAMILIES, Counter, Histogram

ROOT = Path(__file__).resolve().parent.parent
SERIES = re.compile(r"\b(?:abgate|ab_testing)_[a-z0-9_]+\b")
# Still spelled where the statistics are gathered, owned by the statistics work (issue 27 §3):
# it takes its families from the catalogue when it lands.
NOT_YET_FROM_CATALOGUE: set[str] = set()


def _series(family: metrics_catalogue.Family) -> set[str]:
    """The series names Prometheus stores for a family."""
    if isinstance(family, Counter):
        return {f"{family.name}_total", f"{family.name}_created"}
    if isinstance(family, Histogram):
        return {f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum", "created")}
    return {family.name}


def test_each_family_is_declared_once_with_a_valid_name() -> None:
    names = [family.name for family in FAMILIES]
    assert len(names) == len(set(names))
    for family in FAMILIES:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", family.name), family.name
        assert not family.name.endswith("_total"), family.name  # prometheus-client adds it
        assert family.help.endswith("."), family.name
        made = family.new()
        assert (made.name, made.documentation) == (family.name, family.help)


def test_every_series_monitoring_reads_is_declared() -> None:
    exported = {series for family in FAMILIES for series in _series(family)}
    rules = yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text())
    recorded = {
        rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule
    }
    read = set()
    for path in [*(ROOT / "monitoring").rglob("*.yml"), *(ROOT / "monitoring").rglob("*.json")]:
        read |= set(SERIES.findall(path.read_text()))
    read |= set(SERIES.findall((ROOT / "monitoring" / "grafana" / "dashboards.py").read_text()))
    read.discard("abgate_control_process")  # the control process's process_* prefix
    assert read, "the dashboards and alerts read no abgate series"
    assert read - recorded <= exported, sorted(read - recorded - exported)


def test_no_other_module_spells_a_family_name() -> None:
    quoted = {f'"{family.name}"' for family in FAMILIES}
    spelled = []
    for package in ("proxy", "control", "state", "config"):
        for path in sorted((ROOT / package).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            if where == "config/metrics_catalogue.py" or where in NOT_YET_FROM_CATALOGUE:
                continue
            text = path.read_text()
            spelled += [f"{where}: {name}" for name in quoted if name in text]
    assert spelled == []
