"""OpenAPI 3.1 description of the control API, served at GET /api/openapi.json."""

from __future__ import annotations

from typing import Any


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ERROR = _json(_ref("Error"), "Error")
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
PERCENTAGE = {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "abgate control API", "version": "1",
             "description": "Flags (each experiment's treatment percentage), instances, "
                            "emergency rollback, config reload, metrics."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "Flag": {"type": "object",
                     "required": ["name", "percentage", "version", "updated_at", "updated_by",
                                  "reason"],
                     "properties": {"name": {"type": "string"}, "percentage": PERCENTAGE,
                                    "version": {"type": "integer", "minimum": 1},
                                    "updated_at": {"type": "number"},
                                    "updated_by": {"type": "string"},
                                    "reason": {"type": "string"}}},
            "Instance": {"type": "object",
                         "properties": {"id": {"type": "string"}, "address": {"type": "string"},
                                        "pid": {"type": "integer"},
                                        "started_at": {"type": "number"},
                                        "heartbeat_at": {"type": "number"},
                                        "applied": {"type": "object",
                                                    "additionalProperties": {"type": "integer"}},
                                        "converged": {"type": "boolean"}}},
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/health": {"get": {"summary": "Liveness", "security": [],
                            "responses": {"200": {"description": "OK"}}}},
        "/metrics": {"get": {"summary": "Prometheus exposition", "security": [],
                             "responses": {"200": {"description": "OK"}}}},
        "/api/openapi.json": {"get": {"summary": "This document", "security": [],
                                      "responses": {"200": {"description": "OK"}}}},
        "/api/flags": {
            "get": {"summary": "All flags", "security": [],
                    "responses": {"200": _json({"type": "object", "properties": {
                        "flags": {"type": "array", "items": _ref("Flag")}}})}},
            "post": {"summary": "Set several flags in one atomic step",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"type": "object", "required": ["flags"], "properties": {
                             "flags": {"type": "object", "additionalProperties": PERCENTAGE},
                             "reason": {"type": "string"}}}}}},
                     "responses": {"200": _json({"type": "object", "properties": {
                         "flags": {"type": "array", "items": _ref("Flag")}}}),
                         "400": ERROR, "401": ERROR, "404": ERROR, "503": ERROR}},
        },
        "/api/flags/{name}": {
            "parameters": [NAME],
            "get": {"summary": "One flag", "security": [],
                    "responses": {"200": _json(_ref("Flag")), "404": ERROR}},
            "post": {"summary": "Set a flag's treatment percentage",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"type": "object", "required": ["percentage"],
                                    "properties": {"percentage": PERCENTAGE,
                                                   "reason": {"type": "string"}}}}}},
                     "responses": {"200": _json(_ref("Flag")), "400": ERROR, "401": ERROR,
                                   "404": ERROR, "503": ERROR}},
        },
        "/api/flags/{name}/history": {
            "parameters": [NAME, {"name": "limit", "in": "query",
                                  "schema": {"type": "integer", "minimum": 1,
                                             "maximum": 10000, "default": 100}}],
            "get": {"summary": "Audit trail of a flag, newest first", "security": [],
                    "responses": {"200": _json({"type": "object", "properties": {
                        "name": {"type": "string"},
                        "history": {"type": "array", "items": _ref("Flag")}}}),
                        "400": ERROR, "404": ERROR}},
        },
        "/api/instances": {
            "get": {"summary": "Live proxy instances and the flag versions they applied",
                    "security": [],
                    "responses": {"200": _json({"type": "object", "properties": {
                        "instances": {"type": "array", "items": _ref("Instance")}}})}},
        },
        "/api/rollback": {
            "post": {"summary": "Treatment to 0% for the named experiments (all if none), "
                                "confirmed by every live instance",
                     "requestBody": {"content": {"application/json": {"schema": {
                         "type": "object", "properties": {
                             "experiments": {"type": "array", "items": {"type": "string"}},
                             "reason": {"type": "string"},
                             "timeout": {"type": "number", "exclusiveMinimum": 0,
                                         "maximum": 300}}}}}},
                     "responses": {"200": {"description": "Every instance converged"},
                                   "504": {"description": "Some instances did not converge "
                                                          "in time; `laggards` names them"},
                                   "400": ERROR, "401": ERROR, "404": ERROR, "503": ERROR}},
        },
        "/api/breakers": {
            "get": {"summary": "Circuit breakers of this process", "security": [],
                    "responses": {"200": {"description": "OK"}}}},
        "/api/breakers/{upstream}": {
            "parameters": [{"name": "upstream", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "post": {"summary": "Force a breaker open or closed, or return it to auto",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"type": "object", "required": ["state"], "properties": {
                             "state": {"enum": ["forced_open", "forced_closed", "auto"]}}}}}},
                     "responses": {"200": {"description": "OK"}, "400": ERROR, "404": ERROR}}},
        "/api/shadow/stats": {
            "get": {"summary": "Shadow comparisons per experiment", "security": [],
                    "responses": {"200": {"description": "OK"}}}},
        "/health/ready": {
            "get": {"summary": "Config loaded and flags read", "security": [],
                    "responses": {"200": {"description": "Ready"},
                                  "503": {"description": "Not ready"}}}},
        "/health/aggregate": {
            "get": {"summary": "Overall health with a reason per component", "security": [],
                    "responses": {"200": {"description": "healthy or degraded"},
                                  "503": {"description": "unhealthy"}}}},
        "/api/config": {
            "get": {"summary": "The loaded config and the last reload's result",
                    "security": [], "responses": {"200": {"description": "OK"}}},
        },
        "/api/config/reload": {
            "post": {"summary": "Reload the config file (validated as a whole first)",
                     "responses": {"200": {"description": "Reloaded"},
                                   "400": {"description": "Refused; the running config "
                                                          "stays. `problems` lists why"},
                                   "401": ERROR}},
        },
    },
}
