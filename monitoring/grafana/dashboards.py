"""The three Grafana dashboards, as code: `python -m monitoring.grafana.dashboards` writes
them to monitoring/grafana/dashboards/; a test checks the committed files are current, their
structure, and runs every query against a real Prometheus.

  ab-testing-overview.json   12 panels: the split, traffic, latency, errors, fallbacks,
                             breakers, significance, effects, samples, SRM, shadow, and
                             "Business Impact"
  ab-testing-control.json    "Traffic Split", the rollout's state and stage, approvals
                             pending, decisions and their reasons, links to the API
  rollout-progress.json      the percentage over time, stages, decisions, ETA, gates
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent / "dashboards"
EXP = 'experiment=~"$experiment"'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SHADOW = "abgate_shadow_comparisons_total"


def _target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}


def _panel(
    kind: str, title: str, targets: list[dict[str, Any]], unit: str = "short", description: str = ""
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
    }


def _layout(panels: list[dict[str, Any]], width: int = 8, height: int = 8) -> list[dict[str, Any]]:
    """Ids from 1 and a grid of `24 / width` panels per row, none overlapping."""
    per_row = 24 // width
    for index, panel in enumerate(panels):
        panel["id"] = index + 1
        panel["gridPos"] = {
            "x": (index % per_row) * width,
            "y": (index // per_row) * height,
            "w": width,
            "h": height,
        }
    return panels


def _dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], links: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["abgate"],
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-6h", "to": "now"},
        "links": links or [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Data source",
                },
                {
                    "name": "experiment",
                    "type": "query",
                    "label": "Experiment",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": "label_values(abgate_experiment_percentage, experiment)",
                        "refId": "A",
                    },
                    "includeAll": True,
                    "multi": True,
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                },
            ]
        },
        "panels": panels,
    }


def overview() -> dict[str, Any]:
    latency = "ab_testing_decision_latency_seconds_bucket"
    panels = [
        _panel(
            "stat",
            "Traffic split",
            [_target(f"abgate_experiment_percentage{{{EXP}}}", "{{experiment}} ML %")],
            "percent",
        ),
        _panel(
            "timeseries",
            "Requests per second by arm",
            [
                _target(
                    f"sum by (experiment, arm) (rate(abgate_requests_total{{{EXP}}}[1m]))",
                    "{{experiment}} {{arm}}",
                )
            ],
            "reqps",
        ),
        _panel(
            "timeseries",
            "Decision latency p50 / p95 by arm",
            [
                _target(
                    f"histogram_quantile(0.5, sum by (arm, le) (rate({latency}{{{EXP}}}[5m])))",
                    "p50 {{arm}}",
                ),
                _target(
                    f"histogram_quantile(0.95, sum by (arm, le) (rate({latency}{{{EXP}}}[5m])))",
                    "p95 {{arm}}",
                ),
            ],
            "s",
        ),
        _panel(
            "timeseries",
            "Error rate by arm (5xx)",
            [
                _target(
                    f'sum by (arm) (rate(abgate_requests_total{{{EXP},status_class="5xx"}}[5m])) / '
                    f"sum by (arm) (rate(abgate_requests_total{{{EXP}}}[5m]))",
                    "{{arm}}",
                )
            ],
            "percentunit",
        ),
        _panel(
            "timeseries",
            "Fallbacks to control",
            [
                _target(
                    f"sum by (experiment, reason) (rate(abgate_fallbacks_total{{{EXP}}}[5m]))",
                    "{{experiment}} {{reason}}",
                )
            ],
            "reqps",
        ),
        _panel(
            "stat",
            "Breaker state",
            [_target("max by (upstream) (abgate_breaker_state)", "{{upstream}}")],
            "short",
            "0 closed, 1 open, 2 half-open, 3 forced open, 4 forced closed",
        ),
        _panel(
            "table",
            "Significance (sequential p-value)",
            [
                _target(
                    f'abgate_stats_p_value{{{EXP},test="sequential"}}', "{{experiment}} {{metric}}"
                )
            ],
        ),
        _panel(
            "timeseries",
            "Effect with its interval (treatment - control)",
            [
                _target(f'abgate_stats_effect{{{EXP},kind="absolute"}}', "{{metric}} effect"),
                _target(f'abgate_stats_interval{{{EXP},bound="lower"}}', "{{metric}} lower"),
                _target(f'abgate_stats_interval{{{EXP},bound="upper"}}', "{{metric}} upper"),
            ],
        ),
        _panel(
            "bargauge",
            "Samples per arm against samples needed",
            [
                _target(f"abgate_stats_samples{{{EXP}}}", "{{arm}} samples"),
                _target(f"abgate_rollout_samples_needed{{{EXP}}}", "{{arm}} needed"),
            ],
        ),
        _panel(
            "stat",
            "Sample-ratio mismatch (p-value)",
            [_target(f"abgate_stats_srm_p_value{{{EXP}}}", "{{experiment}}")],
            "short",
            "below 0.001: the split is not what it should be; the rollout holds",
        ),
        _panel(
            "timeseries",
            "Shadow agreement",
            [
                _target(
                    f'sum by (experiment) (rate({SHADOW}{{{EXP},result="agree"}}[5m]))'
                    f" / sum by (experiment) (rate({SHADOW}{{{EXP}}}[5m]))",
                    "{{experiment}}",
                )
            ],
            "percentunit",
        ),
        _panel(
            "table",
            "Business Impact",
            [
                _target(
                    f'abgate_stats_improvement{{{EXP},kind="relative",metric!~"latency|error"}}',
                    "{{experiment}} {{metric}} improvement",
                ),
                _target(
                    f'abgate_stats_improvement{{{EXP},kind="significant",metric!~"latency|error"}}',
                    "{{experiment}} {{metric}} significant",
                ),
            ],
            "percentunit",
            "business outcomes per experiment: relative improvement of the ML arm (> 0 is "
            "better) and whether the sequential test is significant",
        ),
    ]
    return _dashboard("abgate-overview", "A/B testing overview", _layout(panels))


def control() -> dict[str, Any]:
    panels = [
        _panel(
            "stat",
            "Traffic Split",
            [_target(f"abgate_experiment_percentage{{{EXP}}}", "{{experiment}} ML %")],
            "percent",
        ),
        _panel(
            "stat",
            "Rollout state",
            [_target(f"abgate_rollout_state{{{EXP}}} == 1", "{{experiment}}: {{state}}")],
        ),
        _panel(
            "stat",
            "Stage",
            [_target(f"abgate_rollout_stage_percentage{{{EXP}}}", "{{experiment}}")],
            "percent",
        ),
        _panel(
            "stat",
            "Approvals pending",
            [_target(f'sum(abgate_rollout_state{{{EXP},state="awaiting_approval"}})', "waiting")],
        ),
        _panel(
            "table",
            "Decisions and reasons (last hour)",
            [
                _target(
                    "sum by (decision, reason) (increase(abgate_rollout_decisions_total[1h]))",
                    "{{decision}}: {{reason}}",
                )
            ],
        ),
        _panel(
            "stat",
            "Rollout errors",
            [_target(f"sum(increase(abgate_rollout_errors_total{{{EXP}}}[1h]))", "errors")],
        ),
    ]
    links = [
        {
            "title": "Control API: rollouts",
            "type": "link",
            "url": "http://127.0.0.1:8092/api/rollouts",
        },
        {"title": "Control page", "type": "link", "url": "http://127.0.0.1:8092/ui"},
    ]
    return _dashboard("abgate-control", "A/B testing control", _layout(panels), links)


def rollout_progress() -> dict[str, Any]:
    panels = [
        _panel(
            "timeseries",
            "ML percentage over time",
            [
                _target(f"abgate_experiment_percentage{{{EXP}}}", "{{experiment}} live"),
                _target(f"abgate_rollout_stage_percentage{{{EXP}}}", "{{experiment}} stage"),
            ],
            "percent",
        ),
        _panel(
            "timeseries",
            "Decisions",
            [
                _target(
                    "sum by (decision) (increase(abgate_rollout_decisions_total[5m]))",
                    "{{decision}}",
                )
            ],
        ),
        _panel(
            "stat",
            "ETA of the stage's samples",
            [_target(f"abgate_rollout_eta_seconds{{{EXP}}}", "{{experiment}}")],
            "s",
        ),
        _panel(
            "table",
            "Gates (1 pass, 0 hold, -1 fail)",
            [_target(f"abgate_rollout_gate_status{{{EXP}}}", "{{experiment}} {{gate}}")],
        ),
    ]
    return _dashboard("abgate-rollout", "Rollout progress", _layout(panels, width=12))


DASHBOARDS = {
    "ab-testing-overview.json": overview,
    "ab-testing-control.json": control,
    "rollout-progress.json": rollout_progress,
}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        (HERE / name).write_text(render(build))
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
