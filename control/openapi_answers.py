"""The answers not yet declared as models, described field by field for the OpenAPI
document: the comparison of record (control/evidence.py) and the statistics worker's
reports, which issue 27 §3 is to make typed. Every other answer is its model's
(control/*_payloads.py)."""

from __future__ import annotations

from typing import Any

NUMBER = {"type": ["number", "null"]}
COUNT = {"type": "integer", "minimum": 0}
PHASE = {  # a phase as the evidence names it (the timeline's: timeline_payloads.PhaseAnswer)
    "type": "object",
    "required": ["id", "percentage", "started_at"],
    "properties": {
        "id": {"type": "integer"},
        "percentage": {"type": "number"},
        "started_at": {"type": "number"},
    },
}
INTERVAL = {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 2, "maxItems": 2}

EVIDENCE = {
    "type": "object",
    "description": "Which phases the numbers are of: the current phase while a stage runs, "
    "the rollout's earlier phases with both arms (precision-weighted) once it is at 100% "
    "or rolled back (control/evidence.py).",
    "required": ["basis", "phases", "alpha", "primary"],
    "properties": {
        "basis": {"type": "string"},
        "phases": {
            "type": "array",
            "items": PHASE,
        },
        "alpha": {"type": "number"},
        "primary": {"type": ["string", "null"]},
    },
}
METRIC_EVIDENCE = {
    "type": "object",
    "required": ["metric", "status", "phases", "n", "sample_size", "p_value", "power"],
    "properties": {
        "metric": {"type": "string"},
        "status": {"type": "string"},
        "phases": {"type": "array", "items": {"type": "integer"}},
        "n": {"type": "object", "additionalProperties": COUNT},
        "sample_size": COUNT,
        "effect": NUMBER,
        "ci": INTERVAL,
        "p_value": {**NUMBER, "description": "always valid (the confidence sequence)"},
        "p_value_fixed": NUMBER,
        "improvement": {**NUMBER, "description": "relative, signed by direction: > 0 better"},
        "improvement_interval": INTERVAL,
        "power": {
            **NUMBER,
            "description": "power to detect the plan's minimum detectable effect at these "
            "samples (a design quantity, not the observed effect's power); primary only",
        },
        "minimum_detectable_effect": NUMBER,
        "treatment_interval": INTERVAL,
    },
}
SIGNIFICANCE = {
    "type": "object",
    "required": ["name", "metrics", "metric", "p_value", "power", "sample_size", "evidence"],
    "properties": {
        "name": {"type": "string"},
        "phase": {"type": ["object", "null"]},
        "metrics": {"type": "object", "description": "each metric of the current phase"},
        "across_phases": {"type": "object"},
        "metric": {"type": ["string", "null"], "description": "the plan's primary metric"},
        "p_value": {**NUMBER, "description": "the primary's, always valid"},
        "power": {**NUMBER, "description": "to detect the plan's minimum effect"},
        "sample_size": COUNT,
        "primary": {"oneOf": [METRIC_EVIDENCE, {"type": "null"}]},
        "evidence": EVIDENCE,
        "note": {"type": "string"},
    },
}
COMPARISON = {
    "type": "object",
    "required": ["name", "metrics", "evidence"],
    "properties": {
        "name": {"type": "string"},
        "metrics": {"type": "object"},
        "evidence": EVIDENCE,
    },
    "additionalProperties": {
        **NUMBER,
        "description": "`<arm>_<metric>`: the arm's mean (ml_accuracy, deterministic_accuracy)",
    },
}

ANSWERS: dict[tuple[str, str], dict[str, Any]] = {
    ("/api/experiments/{name}/significance", "get"): SIGNIFICANCE,
    ("/api/metrics/{name}/comparison", "get"): COMPARISON,
}


def describe_answers(paths: dict[str, Any], json_content: Any) -> None:
    """Put the answers above into `paths` (their 200s)."""
    for (path, method), schema in ANSWERS.items():
        paths[path][method]["responses"]["200"] = json_content(schema)
