"""OpenAPI 3.1 description of the control API, served at GET /api/openapi.json."""

from __future__ import annotations

from typing import Any

from abgate.control import experiment_payloads as experiment
from abgate.control import flag_payloads as flags
from abgate.control import health_payloads as health
from abgate.control import outcome_payloads as outcome
from abgate.control import plane_payloads as plane
from abgate.control import stats_payloads as stats
from abgate.control import timeline_payloads as timeline
from abgate.control.http import MAX_DEPTH, too_large
from abgate.control.openapi_models import content, request_body, resolve
from abgate.control.openapi_parts import ERROR
from abgate.control.openapi_parts import json_content as _json
from abgate.control.openapi_rollouts import ROLLOUT_PATHS
from abgate.control.payloads import Error

EXPERIMENT = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "an experiment, or `current`: the one whose rollout is under way, else "
    "control.default_experiment, else the only one",
}
_READ = {"security": [], "parameters": [EXPERIMENT]}
STATISTICS_PATHS: dict[str, Any] = {
    "/api/statistics/significance-test": {
        "post": {
            "summary": "A test on inline summaries (test, a, b) or on live data "
            "(experiment, metric, cohort_a, cohort_b); without a body (or {}), as GET",
            "requestBody": request_body(
                {"oneOf": [stats.WelchTestBody, stats.ProportionTestBody, stats.LiveTestBody]},
                required=False,
            ),
            "responses": {
                "200": _json({"oneOf": [stats.InlineTestAnswer, stats.LiveTestAnswer]}),
                "400": ERROR,
                "401": ERROR,
                "404": ERROR,
                "503": ERROR,
            },
        },
        "get": {
            "summary": "The current experiment's primary metric, control against treatment, "
            "on the comparison of record",
            "security": [],
            "responses": {
                "200": content(stats.LiveTestAnswer),
                "400": ERROR,
                "404": ERROR,
                "503": ERROR,
            },
        },
    },
    "/api/statistics/sample-size": {
        "post": {
            "summary": "Samples per arm for a power, from Cohen's d or a baseline rate "
            "and minimum detectable effect",
            "requestBody": request_body(
                {"oneOf": [stats.MeansSampleSizeBody, stats.RatesSampleSizeBody]}
            ),
            "responses": {"200": content(stats.SampleSizeAnswer), "400": ERROR, "401": ERROR},
        }
    },
    "/api/experiments": {
        "get": {
            "summary": "Every experiment: arms, current phase, samples, SRM",
            "security": [],
            "responses": {
                "200": content(experiment.ExperimentsAnswer),
                "404": ERROR,
                "503": ERROR,
            },
        }
    },
    "/api/experiments/{name}": {
        "get": {
            **_READ,
            "summary": "Phases with samples per arm and SRM",
            "responses": {
                "200": content(experiment.ExperimentAnswer),
                "400": ERROR,
                "404": ERROR,
                "503": ERROR,
            },
        }
    },
    "/api/experiments/{name}/significance": {
        "get": {
            **_READ,
            "summary": "Every metric of the current phase (type, direction, sequential and "
            "fixed-horizon results, or why not yet); at the top the primary metric's p-value "
            "and power on the comparison of record",
            "responses": {
                "200": content(experiment.SignificanceAnswer),
                "400": ERROR,
                "404": ERROR,
                "503": ERROR,
            },
        }
    },
    "/api/experiments/{name}/timeline": {
        "get": {
            **_READ,
            "summary": "Each statistics tick's numbers, bounded and downsampled, for the "
            "charts: treatment share, rollout decision, each metric's effect with its "
            "always-valid interval and line, samples against the need, latency p50/p95 "
            "per arm; and the rollout's decisions as events",
            "responses": {
                "200": content(timeline.TimelineAnswer),
                "400": ERROR,
                "404": ERROR,
                "503": ERROR,
            },
        }
    },
    "/api/metrics/{name}/comparison": {
        "get": {
            **_READ,
            "summary": "Each metric's mean per arm and its improvement (signed by "
            "the metric's direction: positive is better)",
            "responses": {
                "200": content(experiment.ComparisonAnswer),
                "400": ERROR,
                "404": ERROR,
                "503": ERROR,
            },
        }
    },
    "/api/outcomes": {
        "post": {
            "summary": "Business outcomes in one batch, all or nothing (a bad item is "
            "named by its index)",
            "requestBody": request_body(outcome.OUTCOMES),
            "responses": {
                "200": content(outcome.AcceptedAnswer),
                "400": ERROR,
                "401": ERROR,
                "404": ERROR,
                "503": ERROR,
            },
        }
    },
}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
CONFLICT = content(flags.ConflictAnswer, "Another writer changed the flag; nothing was written")

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "abgate control API",
        "version": "1",
        "description": "Flags (each experiment's treatment percentage), instances, "
        "emergency rollback, config reload, metrics.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/health": {
            "get": {
                "summary": "Liveness",
                "security": [],
                "responses": {"200": {"description": "OK"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus exposition",
                "security": [],
                "responses": {"200": {"description": "OK"}},
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OK"}},
            }
        },
        "/api/flags": {
            "get": {
                "summary": "All flags",
                "security": [],
                "responses": {"200": content(flags.FlagsAnswer)},
            },
            "post": {
                "summary": "Set several flags in one atomic step",
                "requestBody": request_body(flags.SetFlagsBody),
                "responses": {
                    "200": content(flags.FlagsAnswer),
                    "400": ERROR,
                    "401": ERROR,
                    "404": ERROR,
                    "409": CONFLICT,
                    "503": ERROR,
                },
            },
        },
        "/api/flags/{name}": {
            "parameters": [NAME],
            "get": {
                "summary": "One flag",
                "security": [],
                "responses": {"200": content(flags.FlagAnswer), "404": ERROR},
            },
            "post": {
                "summary": "Set a flag's treatment percentage",
                "requestBody": request_body(flags.SetFlagBody),
                "responses": {
                    "200": content(flags.FlagAnswer),
                    "400": ERROR,
                    "401": ERROR,
                    "404": ERROR,
                    "409": CONFLICT,
                    "503": ERROR,
                },
            },
        },
        "/api/flags/{name}/history": {
            "parameters": [
                NAME,
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
                },
            ],
            "get": {
                "summary": "Audit trail of a flag, newest first",
                "security": [],
                "responses": {
                    "200": content(flags.FlagHistoryAnswer),
                    "400": ERROR,
                    "404": ERROR,
                },
            },
        },
        "/api/instances": {
            "get": {
                "summary": "Live proxy instances and the flag versions they applied",
                "security": [],
                "responses": {"200": content(flags.InstancesAnswer)},
            },
        },
        "/api/rollback": {
            "post": {
                "summary": "Treatment to 0% for the named experiments (all if none), "
                "confirmed by every live instance",
                "requestBody": request_body(flags.RollbackBody, required=False),
                "responses": {
                    "200": content(
                        flags.RollbackAnswer,
                        "Every instance converged, or nobody can tell (`converged` null, "
                        "`convergence_unknown` says why: the instance registry is unreachable)",
                    ),
                    "504": content(
                        flags.RollbackAnswer,
                        "Some instances did not converge in time; `laggards` names them",
                    ),
                    "400": ERROR,
                    "401": ERROR,
                    "404": ERROR,
                    "503": ERROR,
                },
            },
        },
        "/api/breakers": {
            "get": {
                "summary": "Circuit breakers of this process",
                "security": [],
                "responses": {"200": content(plane.BreakersAnswer)},
            }
        },
        "/api/breakers/{upstream}": {
            "parameters": [
                {"name": "upstream", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "post": {
                "summary": "Force a breaker open or closed, or return it to auto",
                "requestBody": request_body(plane.BreakerBody),
                "responses": {
                    "200": content(plane.BreakerAnswer),
                    "400": ERROR,
                    "401": ERROR,
                    "404": ERROR,
                },
            },
        },
        "/api/shadow/stats": {
            "get": {
                "summary": "Shadow comparisons per experiment",
                "security": [],
                "responses": {"200": content(plane.ShadowStatsAnswer)},
            }
        },
        "/health/ready": {
            "get": {
                "summary": "Config loaded and flags read",
                "security": [],
                "responses": {
                    "200": content(health.ReadyAnswer, "Ready"),
                    "503": content(health.ReadyAnswer, "Not ready: `reason` says why"),
                },
            }
        },
        "/health/aggregate": {
            "get": {
                "summary": "Overall health with a reason per component",
                "security": [],
                "responses": {
                    "200": content(health.AggregateAnswer, "healthy or degraded"),
                    "503": content(health.AggregateAnswer, "unhealthy"),
                },
            }
        },
        "/api/config": {
            "get": {
                "summary": "The loaded config and the last reload's result",
                "security": [],
                "responses": {"200": content(plane.ConfigAnswer)},
            },
        },
        "/api/config/reload": {
            "post": {
                "summary": "Reload the config file (validated as a whole first)",
                "responses": {
                    "200": content(
                        plane.ReloadAnswer,
                        "Reloaded (`result: success`), or the file is the running config "
                        "already (`result: unchanged`: nothing applied)",
                    ),
                    "400": content(
                        plane.ReloadAnswer,
                        "Refused; the running config stays. `problems` lists why",
                    ),
                    "401": ERROR,
                },
            },
        },
        **STATISTICS_PATHS,
        **ROLLOUT_PATHS,
    },
}


def _every_write_answers(paths: dict[str, Any]) -> None:
    """What the guards in front of every write may answer, documented once for all."""
    for item in paths.values():
        operation = item.get("post")
        if operation is not None:
            for status, why in (
                ("401", "no or wrong bearer token"),
                (
                    "403",
                    "a write from another site (Sec-Fetch-Site cross-site or same-site, or "
                    "an Origin not this API's), or a Host that is not this API",
                ),
                ("413", f"{too_large()}, or nested deeper than {MAX_DEPTH} levels"),
            ):
                operation["responses"].setdefault(status, content(Error, why))


_every_write_answers(OPENAPI["paths"])
resolve(OPENAPI)
