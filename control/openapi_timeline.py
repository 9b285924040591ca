"""The timeline's part of the OpenAPI document: `GET /api/experiments/{name}/timeline`."""

from __future__ import annotations

from typing import Any

from abgate.control.openapi_answers import NUMBER, PHASE

_ARMS = {
    "type": "object",
    "additionalProperties": {"type": "integer", "minimum": 0},
    "description": "control and treatment",
}
_METRIC = {
    "type": "object",
    "required": ["role", "effect", "low", "high", "line", "p_value", "status"],
    "properties": {
        "role": {"enum": ["primary", "guardrail", "other"]},
        "effect": {
            **NUMBER,
            "description": "treatment minus control in the metric's unit, signed so that up "
            "is better (times -1 for a lower-is-better metric)",
        },
        "low": {**NUMBER, "description": "the always-valid sequential interval"},
        "high": NUMBER,
        "line": {
            **NUMBER,
            "description": "primary: the plan's minimum effect (+); guardrail: its margin (-)",
        },
        "p_value": {**NUMBER, "description": "sequential, Holm-adjusted"},
        "status": {"type": "string"},
    },
}
_LATENCY = {
    "type": "object",
    "required": ["n", "p50", "p95"],
    "properties": {
        "n": {"type": "integer", "minimum": 0, "description": "answers in the point's window"},
        "p50": {**NUMBER, "description": "milliseconds"},
        "p95": {**NUMBER, "description": "milliseconds"},
    },
}
_ROLLOUT = {
    "type": ["object", "null"],
    "required": ["state", "stage", "decision", "kind", "reason", "eta_seconds", "needed"],
    "properties": {
        "state": {"type": "string"},
        "stage": {"type": "integer", "minimum": 0},
        "decision": {"type": "string"},
        "kind": {"type": "string"},
        "reason": {"type": "string"},
        "eta_seconds": NUMBER,
        "needed": {"oneOf": [_ARMS, {"type": "null"}]},
    },
}
_POINT = {
    "type": "object",
    "required": ["t", "phase", "percentage", "samples", "rollout", "metrics", "latency_ms"],
    "properties": {
        "t": {"type": "number", "description": "Unix time of the tick"},
        "phase": {"type": ["integer", "null"]},
        "percentage": {**NUMBER, "description": "the treatment's share, %"},
        "samples": _ARMS,
        "rollout": _ROLLOUT,
        "metrics": {"type": "object", "additionalProperties": _METRIC},
        "latency_ms": {
            "type": "object",
            "additionalProperties": _LATENCY,
            "description": "per arm label, the answers since the point before",
        },
    },
}
TIMELINE: dict[str, Any] = {
    "type": "object",
    "required": ["name", "arms", "capacity", "stride", "ticks", "phases", "points", "events"],
    "properties": {
        "name": {"type": "string"},
        "arms": {"type": "object", "additionalProperties": {"type": "string"}},
        "capacity": {"type": "integer", "minimum": 2, "description": "most points kept"},
        "stride": {
            "type": "integer",
            "minimum": 1,
            "description": "ticks per kept point (doubles each time the series fills)",
        },
        "ticks": {"type": "integer", "minimum": 0},
        "phases": {
            "type": "array",
            "items": PHASE,
        },
        "points": {"type": "array", "items": _POINT},
        "events": {
            "type": "array",
            "description": "the rollout's decisions and changes as they happened (the last "
            "500): time, actor, state, transition, change, stage, decision, reason",
            "items": {"type": "object"},
        },
    },
}


def timeline_paths(read: dict[str, Any], json_content: Any, error: Any) -> dict[str, Any]:
    return {
        "/api/experiments/{name}/timeline": {
            "get": {
                **read,
                "summary": "Each statistics tick's numbers, bounded and downsampled, for the "
                "charts: treatment share, rollout decision, each metric's effect with its "
                "always-valid interval and line, samples against the need, latency p50/p95 "
                "per arm; and the rollout's decisions as events",
                "responses": {
                    "200": json_content(TIMELINE),
                    "400": error,
                    "404": error,
                    "503": error,
                },
            }
        }
    }
