"""Stability and business impact per experiment, by name (the requirements' paths).

    GET /api/metrics/{name}/stability            incidents, uptime of proxied answers,
                                                 rollbacks, time at the current percentage
    GET /api/metrics/{name}/business-impact      each business metric's improvement,
                                                 interval and significance (direction-aware)
    GET /api/metrics/{name}/long-term-stability  days at 100%, incidents
    GET /api/metrics/{name}/final-assessment     every business metric at the end, with the
                                                 rollout's state

Business metrics are the declared ones (not the built-in latency and error). Numbers are
of the current phase (the sequential test's interval, so it holds whenever it is read).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from config.model import BUILT_IN_METRICS
from control.experiments_api import require_worker
from control.http import CONTROLLER, ApiError, json_response
from state.errors import StoreUnavailable
from state.flags import FlagStore

FLAG_STORE = web.AppKey("impact_flag_store", FlagStore)


def _name(request: web.Request) -> str:
    worker = require_worker(request)
    name = request.match_info["name"]
    if name not in worker.config.experiments:
        raise ApiError(404, f"unknown experiment {name!r}")
    return name


async def _business(request: web.Request, name: str) -> dict[str, Any]:
    worker = require_worker(request)
    try:
        reports = await worker.evaluate_all()
    except StoreUnavailable:
        reports = worker.reports
    report = reports.get(name)
    out: dict[str, Any] = {}
    experiment = worker.config.experiments[name]
    for metric in experiment.metrics:
        if metric.name in BUILT_IN_METRICS:
            continue
        result = report.metrics.get(metric.name) if report else None
        interval = None
        significant = False
        if result is not None and result.sequential is not None:
            rel = result.sequential.ci_relative
            sign = 1.0 if metric.direction == "higher" else -1.0
            if rel is not None and rel[0] is not None and rel[1] is not None:
                low, high = sorted((sign * rel[0], sign * rel[1]))
                interval = [low, high]
            significant = result.significant
        out[metric.name] = {
            "direction": metric.direction,
            "improvement_percentage": (
                result.improvement * 100
                if result is not None and result.improvement is not None
                else None
            ),
            "interval": interval,  # relative, signed so that > 0 is better
            "significant": significant,
            "n": {"control": result.n_a if result else 0, "treatment": result.n_b if result else 0},
        }
    return out


async def _history(request: web.Request, name: str) -> list[dict[str, Any]]:
    controller = request.app.get(CONTROLLER)
    if controller is None or await controller.rollouts.get(name) is None:
        return []
    return await controller.rollouts.history(name, 10_000)


def _incidents(history: list[dict[str, Any]]) -> int:
    return sum(
        1
        for e in history
        if e.get("change") == "incident opened" or e.get("transition") == "rolled_back"
    )


async def stability(request: web.Request) -> web.Response:
    name = _name(request)
    worker = require_worker(request)
    history = await _history(request, name)
    _, sums = await worker.store.read(name)
    answered = sum(s.count for key, s in sums.items() if key[3] == "error")  # every cluster
    failed = sum(s.total for key, s in sums.items() if key[3] == "error")
    flags = request.app[FLAG_STORE]
    flag = flags.table.get(name)
    changes = await flags.history(name, 1000)
    since = flag.updated_at
    for entry in changes:  # the oldest change that set today's percentage, unbroken
        if entry["percentage"] != flag.percentage:
            break
        since = float(str(entry["updated_at"]))
    return json_response(
        {
            "experiment": name,
            "incidents_count": _incidents(history),
            "rollbacks": sum(1 for e in history if e.get("transition") == "rolled_back"),
            "uptime_percentage": 100.0 * (1 - failed / answered) if answered else None,
            "answers": answered,
            "percentage": flag.percentage,
            "seconds_at_current_percentage": time.time() - since,
        }
    )


async def business_impact(request: web.Request) -> web.Response:
    name = _name(request)
    return json_response({"experiment": name, "metrics": await _business(request, name)})


async def long_term_stability(request: web.Request) -> web.Response:
    name = _name(request)
    flags = request.app[FLAG_STORE]
    changes = list(reversed(await flags.history(name, 1000)))  # oldest first
    at_full = 0.0
    for entry, following in zip(changes, [*changes[1:], None], strict=True):
        if entry["percentage"] == 100:
            end = float(str(following["updated_at"])) if following else time.time()
            at_full += end - float(str(entry["updated_at"]))
    return json_response(
        {
            "experiment": name,
            "days_at_100_percent": at_full / 86_400,
            "incidents_count": _incidents(await _history(request, name)),
        }
    )


async def final_assessment(request: web.Request) -> web.Response:
    name = _name(request)
    controller = request.app.get(CONTROLLER)
    rollout = await controller.rollouts.get(name) if controller is not None else None
    return json_response(
        {
            "experiment": name,
            "rollout_state": rollout.state if rollout else None,
            "percentage": request.app[FLAG_STORE].table.get(name).percentage,
            "metrics": await _business(request, name),
        }
    )


def add_impact_routes(app: web.Application, store: FlagStore) -> None:
    app[FLAG_STORE] = store
    app.router.add_get("/api/metrics/{name}/stability", stability)
    app.router.add_get("/api/metrics/{name}/business-impact", business_impact)
    app.router.add_get("/api/metrics/{name}/long-term-stability", long_term_stability)
    app.router.add_get("/api/metrics/{name}/final-assessment", final_assessment)
