"""The control API application: health, metrics, flags, instances, rollback, OpenAPI.

Mutating calls need `Authorization: Bearer <token>` when a token is configured
(ABGATE_CONTROL_TOKEN). Errors are JSON `{"error": "..."}`: 400 bad input, 401 no or wrong
token, 404 unknown flag, 409 a compare-and-set write found another version, 503 a store
unavailable (nothing written, answered in control/http.py), 504 rollback not
confirmed by every instance in time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry

from abgate.config import Config
from abgate.config.export import config_as_json
from abgate.config.fields import shown
from abgate.control.experiments_api import add_experiment_routes
from abgate.control.flag_backend import FlagBackend
from abgate.control.flags_api import add_flag_routes
from abgate.control.health_api import BACKEND, add_health_routes
from abgate.control.http import (
    LOOPBACK_ONLY,
    MAX_BODY,
    RELOADER,
    TOKEN,
    ApiError,
    bearer_auth,
    errors_as_json,
    json_response,
    same_origin,
)
from abgate.control.live_plane import PLANE, RemotePlane, metrics_with_plane
from abgate.control.openapi import OPENAPI
from abgate.control.payloads import answer, read_body
from abgate.control.plane_payloads import (
    BreakerAnswer,
    BreakerBody,
    BreakersAnswer,
    ConfigAnswer,
    ReloadAnswer,
    ShadowExperimentStats,
    ShadowStatsAnswer,
)
from abgate.control.reload import Reloader
from abgate.control.ui_api import add_ui_routes
from abgate.proxy.admin import REGISTRY, health, metrics
from abgate.state.flags import FlagStore

if TYPE_CHECKING:
    from abgate.control.rollout.controller import RolloutController
    from abgate.control.stats_worker import StatsWorker
    from abgate.state.history.writer import HistoryWriter


async def list_breakers(request: web.Request) -> web.Response:
    plane = request.app.get(PLANE)
    local = await plane.breaker_snapshots() if plane is not None else []
    instances = []
    backend = request.app.get(BACKEND)
    if backend is not None and backend.store is not None:
        instances = await backend.store.instances()
    return answer(BreakersAnswer.model_validate({"breakers": local, "instances": instances}))


def _plane(request: web.Request) -> RemotePlane:
    plane = request.app.get(PLANE)
    if plane is None:
        raise ApiError(
            404,
            "this process has no data plane (abgate control): ask abgate run or a proxy's instance",
        )
    return plane


async def shadow_stats(request: web.Request) -> web.Response:
    """Per experiment, and the totals over all of them at the top."""
    experiments = await _plane(request).shadow_stats()
    totals = {
        key: sum(int(str(e[key])) for e in experiments)
        for key in ("total_decisions", "agreements", "disagreements", "errors")
    }
    compared = totals["agreements"] + totals["disagreements"]
    return answer(
        ShadowStatsAnswer(
            experiments=[ShadowExperimentStats.model_validate(e) for e in experiments],
            **totals,
            agreement_rate=totals["agreements"] / compared if compared else None,
        )
    )


async def force_breaker(request: web.Request) -> web.Response:
    plane = _plane(request)
    name = request.match_info["upstream"]
    body = await read_body(request, BreakerBody)
    try:
        return answer(BreakerAnswer.model_validate(await plane.force_breaker(name, body.state)))
    except KeyError:
        raise ApiError(404, f"unknown upstream {shown(name)}") from None


async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


def _reloader(request: web.Request) -> Reloader:
    reloader = request.app.get(RELOADER)
    if reloader is None:
        raise ApiError(
            404,
            "this process has no data plane: config reload is served by "
            "abgate run and abgate proxy",
        )
    return reloader


async def config_status(request: web.Request) -> web.Response:
    reloader = _reloader(request)
    return answer(ConfigAnswer.of(reloader, config_as_json(reloader.config)))


async def config_reload(request: web.Request) -> web.Response:
    outcome = await _reloader(request).reload("api")
    return answer(ReloadAnswer.model_validate(outcome), 400 if outcome.result == "failure" else 200)


def check_exposure(config: Config, token: str | None) -> None:
    """Refuse to serve the control API beyond loopback without a token."""
    problem = config.control.exposure_problem(token)
    if problem is not None:
        raise ValueError(problem)


def create_control_app(
    store: FlagStore,
    registry: CollectorRegistry,
    token: str | None,
    reloader: Reloader | None = None,
    plane: RemotePlane | None = None,
    backend: FlagBackend | None = None,
    worker: StatsWorker | None = None,
    rollouts: RolloutController | None = None,
    history: HistoryWriter | None = None,
    *,
    loopback: bool = True,
) -> web.Application:
    """`plane` is None in `abgate control` (no data plane here). `loopback`: the API listens
    on a loopback address, so only loopback Host names are served (see `same_origin`)."""
    # Imported here: the statistics need scipy (tens of MiB), which data-plane-only
    # processes (abgate proxy) never load.
    from abgate.control.impact_api import add_impact_routes
    from abgate.control.rollout_api import add_rollout_routes
    from abgate.control.stats_api import add_stats_routes

    app = web.Application(
        middlewares=[errors_as_json, same_origin, bearer_auth], client_max_size=MAX_BODY
    )
    app[TOKEN] = token or ""
    app[LOOPBACK_ONLY] = loopback
    app[REGISTRY] = registry
    app.router.add_get("/health", health)
    if plane is not None:
        app[PLANE] = plane
    app.router.add_get("/metrics", metrics if plane is None else metrics_with_plane)
    app.router.add_get("/api/openapi.json", openapi)
    if reloader is not None:
        app[RELOADER] = reloader
    add_health_routes(app, backend)
    add_stats_routes(app)
    add_experiment_routes(app, worker, store.table, history)
    app.router.add_get("/api/shadow/stats", shadow_stats)
    app.router.add_get("/api/breakers", list_breakers)
    app.router.add_post("/api/breakers/{upstream}", force_breaker)
    app.router.add_get("/api/config", config_status)
    app.router.add_post("/api/config/reload", config_reload)
    add_flag_routes(app, store)
    add_rollout_routes(app, rollouts)
    add_impact_routes(app, store)
    add_ui_routes(app)
    return app
