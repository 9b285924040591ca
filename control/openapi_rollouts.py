"""The rollout routes of the OpenAPI document (control/rollout_api.py), their payloads
from control/rollout_payloads.py; and the control page's and reports' routes."""

from __future__ import annotations

from typing import Any

from abgate.control import report_payloads as report
from abgate.control import rollout_payloads as payload
from abgate.control.openapi_models import content, request_body
from abgate.control.openapi_parts import ERROR

_ERROR = ERROR
_EXPERIMENT = {
    "name": "experiment",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the experiment the rollout belongs to, or `current` (the one under way, "
    "else control.default_experiment, else the only one)",
}


def _write(summary: str, body: Any, answer: Any) -> dict[str, Any]:
    """A rollout write: its body optional, its answer the rollout as it now stands."""
    return {
        "parameters": [_EXPERIMENT],
        "post": {
            "summary": summary,
            "requestBody": request_body(body, required=False),
            "responses": {
                "200": content(answer),
                "400": _ERROR,
                "404": _ERROR,
                "409": _ERROR,
                "503": _ERROR,
            },
        },
    }


def _action(summary: str) -> dict[str, Any]:
    return _write(summary, payload.ActionBody, payload.RolloutAnswer)


_METRIC_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "an experiment",
}


def _read(summary: str, answer: Any) -> dict[str, Any]:
    return {
        "parameters": [_METRIC_NAME],
        "get": {
            "summary": summary,
            "security": [],
            "responses": {"200": content(answer), "404": _ERROR, "503": _ERROR},
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
        "Incidents, uptime of proxied answers, rollbacks, time at the current percentage",
        report.StabilityAnswer,
    ),
    "/api/metrics/{name}/business-impact": _read(
        "Each business metric's improvement with its interval and significance",
        report.BusinessImpactAnswer,
    ),
    "/api/metrics/{name}/long-term-stability": _read(
        "Days at 100% and incidents", report.LongTermAnswer
    ),
    "/api/metrics/{name}/final-assessment": _read(
        "Every business metric's improvement at the end, with the rollout's state",
        report.FinalAssessmentAnswer,
    ),
    "/api/rollouts": {
        "get": {
            "summary": "Every rollout",
            "security": [],
            "responses": {"200": content(payload.RolloutsAnswer), "503": _ERROR},
        }
    },
    "/api/rollouts/{experiment}": {
        "parameters": [_EXPERIMENT],
        "get": {
            "summary": "A rollout: state, stage, the last decision with each gate, the ETA",
            "security": [],
            "responses": {
                "200": content(payload.RolloutAnswer),
                "404": _ERROR,
                "400": _ERROR,
                "503": _ERROR,
            },
        },
        "post": {
            "summary": "Start a rollout (with the config's plan, or `plan` overriding it)",
            "requestBody": request_body(payload.StartBody, required=False),
            "responses": {
                "201": content(payload.RolloutAnswer, "Started"),
                "400": _ERROR,
                "404": _ERROR,
                "409": _ERROR,
                "503": _ERROR,
            },
        },
    },
    "/api/rollouts/{experiment}/approve": _write(
        "Approve the stage that needs a person (a rollback still wins)",
        payload.ApproveBody,
        payload.RolloutAnswer,
    ),
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
                "200": content(payload.RolloutHistoryAnswer),
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
                "200": content(payload.VerdictAnswer),
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
            "requestBody": request_body(payload.FlaggerBody, required=False),
            "responses": {
                "200": {
                    "description": "Go on (an event: recorded)",
                    "content": {
                        "application/json": {
                            "schema": {"oneOf": [payload.HookAnswer, payload.RecordedAnswer]}
                        }
                    },
                },
                "403": content(payload.HookAnswer, "Not now"),
                "400": _ERROR,
                "404": _ERROR,
                "503": _ERROR,
            },
        },
    },
    "/api/rollout/decision": {
        "post": {
            "summary": "May the rollout go from current_percentage to target_percentage now?",
            "requestBody": request_body(payload.DecisionBody),
            "responses": {
                "200": content(payload.DecisionAnswer),
                "400": _ERROR,
                "404": _ERROR,
                "503": _ERROR,
            },
        }
    },
    "/api/incidents": {
        "post": {
            "summary": "Open (a rollback follows on the next tick) or close an incident",
            "requestBody": request_body(payload.IncidentBody),
            "responses": {
                "200": content(payload.IncidentAnswer),
                "400": _ERROR,
                "404": _ERROR,
                "503": _ERROR,
            },
        }
    },
}
