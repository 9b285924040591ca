"""The rollout routes of the OpenAPI document (control/rollout_api.py)."""

from __future__ import annotations

from typing import Any, get_args

from abgate.control.openapi_parts import ERROR, json_content
from abgate.state.rollouts import RolloutStatus

_ERROR = ERROR
_EXPERIMENT = {
    "name": "experiment",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the experiment the rollout belongs to, or `current` (the one under way, "
    "else control.default_experiment, else the only one)",
}
_REASON = {"type": "string", "maxLength": 500, "description": "recorded in the history"}
_ROLLOUT = {
    "type": "object",
    "required": ["experiment", "state", "stage", "decision", "reason", "gates"],
    "properties": {
        "experiment": {"type": "string"},
        "state": {"enum": list(get_args(RolloutStatus))},
        "stage": {
            "type": "object",
            "properties": {
                "index": {"type": "integer"},
                "percentage": {
                    "type": "number",
                    "description": "the treatment share the stage runs at (95 in a 5% holdout)",
                },
                "phase": {
                    "enum": ["ramp", "holdout", "released", "bake"],
                    "description": "ramp: a stage before the last; holdout: the last stage with "
                    "a control share kept through its bake, compared like the others; "
                    "released: its gates passed and the holdout went to 100%; bake: 100% with "
                    "no control arm (SLOs only)",
                },
                "holdout": {
                    "type": ["number", "null"],
                    "description": "the control share the last stage keeps (percent), null: none",
                },
                "started_at": {"type": "number"},
            },
        },
        "decision": {"type": "string"},
        "reason": {"type": "string"},
        "eta_seconds": {"type": ["number", "null"]},
        "gates": {"type": "array", "items": {"type": "object"}},
        "next": {"type": ["object", "null"]},
    },
}


def _body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = required
    return {"required": False, "content": {"application/json": {"schema": schema}}}


def _action(summary: str) -> dict[str, Any]:
    return {
        "parameters": [_EXPERIMENT],
        "post": {
            "summary": summary,
            "requestBody": _body({"reason": _REASON}),
            "responses": {
                "200": json_content(_ROLLOUT),
                "400": _ERROR,
                "404": _ERROR,
                "409": _ERROR,
                "503": _ERROR,
            },
        },
    }


_VERDICT = {
    "type": "object",
    "required": ["decision", "reason"],
    "properties": {
        "decision": {"enum": ["promote", "hold", "rollback"]},
        "reason": {"type": "string"},
    },
}

_METRIC_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "an experiment",
}


def _read(summary: str) -> dict[str, Any]:
    return {
        "parameters": [_METRIC_NAME],
        "get": {
            "summary": summary,
            "security": [],
            "responses": {"200": json_content({"type": "object"}), "404": _ERROR, "503": _ERROR},
        },
    }


ROLLOUT_PATHS: dict[str, Any] = {
    "/ui": {
        "get": {
            "summary": "The control page (one HTML file; its scripts: /ui/app.js, /ui/charts.js)",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/ui/app.js": {
        "get": {
            "summary": "The control page's script (no inline script: the page's CSP allows "
            "scripts from 'self' only)",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"text/javascript": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/ui/charts.js": {
        "get": {
            "summary": "The control page's charts: plain SVG drawn from the timeline "
            "(/api/experiments/{name}/timeline), no library",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"text/javascript": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/": {
        "get": {
            "summary": "Redirects to the control page",
            "security": [],
            "responses": {"302": {"description": "to /ui"}, "200": {"description": "OK"}},
        }
    },
    "/api/metrics/{name}/stability": _read(
        "Incidents, uptime of proxied answers, rollbacks, time at the current percentage"
    ),
    "/api/metrics/{name}/business-impact": _read(
        "Each business metric's improvement with its interval and significance"
    ),
    "/api/metrics/{name}/long-term-stability": _read("Days at 100% and incidents"),
    "/api/metrics/{name}/final-assessment": _read(
        "Every business metric's improvement at the end, with the rollout's state"
    ),
    "/api/rollouts": {
        "get": {
            "summary": "Every rollout",
            "security": [],
            "responses": {
                "200": json_content(
                    {
                        "type": "object",
                        "properties": {"rollouts": {"type": "array", "items": _ROLLOUT}},
                    }
                ),
                "503": _ERROR,
            },
        }
    },
    "/api/rollouts/{experiment}": {
        "parameters": [_EXPERIMENT],
        "get": {
            "summary": "A rollout: state, stage, the last decision with each gate, the ETA",
            "security": [],
            "responses": {
                "200": json_content(_ROLLOUT),
                "404": _ERROR,
                "400": _ERROR,
                "503": _ERROR,
            },
        },
        "post": {
            "summary": "Start a rollout (with the config's plan, or `plan` overriding it)",
            "requestBody": _body(
                {
                    "plan": {
                        "type": "object",
                        "description": "as the YAML rollout section (stages, primary, "
                        "guardrails, slo, alpha, power, bake, holdout: {percentage: 5} or "
                        "false, ...)",
                    },
                    "reason": _REASON,
                }
            ),
            "responses": {
                "201": json_content(_ROLLOUT, "Started"),
                "400": _ERROR,
                "404": _ERROR,
                "409": _ERROR,
                "503": _ERROR,
            },
        },
    },
    "/api/rollouts/{experiment}/approve": {
        "parameters": [_EXPERIMENT],
        "post": {
            "summary": "Approve the stage that needs a person (a rollback still wins)",
            "requestBody": _body(
                {
                    "stage": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                    "reason": _REASON,
                }
            ),
            "responses": {
                "200": json_content(_ROLLOUT),
                "400": _ERROR,
                "404": _ERROR,
                "409": _ERROR,
                "503": _ERROR,
            },
        },
    },
    "/api/rollouts/{experiment}/pause": _action("Pause (the percentage stays)"),
    "/api/rollouts/{experiment}/resume": _action("Resume a paused or escalated rollout"),
    "/api/rollouts/{experiment}/abort": _action("Abort: the treatment goes to 0%"),
    "/api/rollouts/{experiment}/promote": _action("Skip to the next stage (an override)"),
    "/api/rollouts/{experiment}/history": {
        "parameters": [
            _EXPERIMENT,
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
            },
        ],
        "get": {
            "summary": "Every decision and action, newest first, with inputs and actor",
            "security": [],
            "responses": {
                "200": json_content({"type": "object"}),
                "400": _ERROR,
                "404": _ERROR,
                "503": _ERROR,
            },
        },
    },
    "/api/rollouts/{experiment}/verdict": {
        "parameters": [_EXPERIMENT],
        "get": {
            "summary": "promote, hold or rollback now (Argo Rollouts' web metric provider)",
            "security": [],
            "responses": {
                "200": json_content(_VERDICT),
                "400": _ERROR,
                "404": _ERROR,
                "503": _ERROR,
            },
        },
    },
    "/api/rollouts/{experiment}/gates/{hook}": {
        "parameters": [
            _EXPERIMENT,
            {
                "name": "hook",
                "in": "path",
                "required": True,
                "schema": {
                    "enum": ["confirm-promotion", "confirm-traffic-increase", "rollback", "event"]
                },
            },
        ],
        "post": {
            "summary": "Flagger webhooks: 200 lets Flagger go on, 403 holds it",
            "requestBody": _body(
                {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "phase": {"type": "string"},
                    "checksum": {"type": "string"},
                    "type": {"type": "string"},
                    "message": {"type": "string"},
                    "metadata": {"type": "object"},
                }
            ),
            "responses": {
                "200": json_content({"type": "object"}),
                "403": json_content(_VERDICT, "Not now"),
                "400": _ERROR,
                "404": _ERROR,
                "503": _ERROR,
            },
        },
    },
    "/api/rollout/decision": {
        "post": {
            "summary": "May the rollout go from current_percentage to target_percentage now?",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["current_percentage", "target_percentage"],
                            "properties": {
                                "experiment": {
                                    "type": "string",
                                    "description": "default: the current experiment",
                                },
                                "current_percentage": {
                                    "type": "number",
                                    "minimum": 0,
                                    "maximum": 100,
                                },
                                "target_percentage": {
                                    "type": "number",
                                    "minimum": 0,
                                    "maximum": 100,
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": json_content(
                    {
                        "type": "object",
                        "required": ["decision", "reason", "checks"],
                        "properties": {"decision": {"enum": ["hold", "continue", "rollback"]}},
                    }
                ),
                "400": _ERROR,
                "404": _ERROR,
                "503": _ERROR,
            },
        }
    },
    "/api/incidents": {
        "post": {
            "summary": "Open (a rollback follows on the next tick) or close an incident",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["experiment"],
                            "properties": {
                                "experiment": {"type": "string"},
                                "open": {"type": "boolean"},
                                "description": {"type": "string", "minLength": 1, "maxLength": 500},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": json_content({"type": "object"}),
                "400": _ERROR,
                "404": _ERROR,
                "503": _ERROR,
            },
        }
    },
}
