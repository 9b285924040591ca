"""GET /health/ready and GET /health/aggregate: is this process ready, and how healthy is the
whole rollout (upstreams, flag store, proxy instances), with the reason for anything not."""

from __future__ import annotations

import contextlib
import time

from aiohttp import web

from abgate.config import Config
from abgate.control.experiments_api import HISTORY
from abgate.control.flag_backend import FlagBackend
from abgate.control.health_payloads import AggregateAnswer, ReadyAnswer
from abgate.control.http import CONTROLLER, RELOADER, WORKER
from abgate.control.live_plane import PLANE, history_report
from abgate.control.payloads import answer
from abgate.control.reload import Reloader
from abgate.proxy.health import DEGRADED, HEALTHY, UNHEALTHY, worst
from abgate.state.errors import StoreUnavailable
from abgate.state.flags import FlagStore

BACKEND = web.AppKey("backend", FlagBackend)
STALE_HEARTBEATS = 3
# Shadow copies dropped in a row (none sent between) before the shadow is called degraded:
# it compares nothing while its treatment's breaker is open or its copies pile up.
SHADOW_DROPPING = 20


async def ready(request: web.Request) -> web.Response:
    """200 once the config is loaded and the flags are in sync (or embedded), and in `abgate
    run` once its data plane is up and connected; else 503."""
    backend = request.app.get(BACKEND)
    sync = backend.sync if backend is not None else None
    if sync is not None and sync.resyncs == 0:
        return answer(ReadyAnswer(ready=False, reason="flags not yet read from Redis"), 503)
    plane = request.app.get(PLANE)
    if plane is not None and not plane.connected:
        return answer(ReadyAnswer(ready=False, reason="the data plane is not connected"), 503)
    return answer(ReadyAnswer(ready=True))


def _flag_store(backend: FlagBackend | None) -> dict[str, object]:
    sync = backend.sync if backend is not None else None
    if sync is None:
        return {"status": HEALTHY, "backend": "memory", "reasons": []}
    if sync.connected:
        return {
            "status": HEALTHY,
            "backend": "redis",
            "state_age_seconds": sync.state_age,
            "reasons": [],
        }
    age = sync.state_age
    return {
        "status": DEGRADED,
        "backend": "redis",
        "state_age_seconds": age,
        "reasons": [
            f"{sync.last_error or 'Redis unreachable'}: routing with the last known flags"
            + (
                f" ({age:.0f}s old)"
                if age != float("inf")
                else " (config defaults and local snapshot)"
            )
        ],
    }


async def _instances(store: FlagStore, interval: float) -> dict[str, object]:
    try:
        instances = await store.instances()
    except StoreUnavailable as exc:
        return {"status": DEGRADED, "instances": [], "reasons": [f"cannot list: {exc}"]}
    flags = store.table.all()
    now, reasons, listed = time.time(), [], []
    for instance in instances:
        age = now - instance.heartbeat_at
        converged = instance.converged(flags)
        listed.append(
            {
                "id": instance.id,
                "address": instance.address,
                "heartbeat_age_seconds": round(age, 3),
                "converged": converged,
            }
        )
        if not converged:
            reasons.append(f"{instance.id} routes with older flags")
        if age > STALE_HEARTBEATS * interval:
            reasons.append(f"{instance.id}: no heartbeat for {age:.1f}s")
    return {"status": DEGRADED if reasons else HEALTHY, "instances": listed, "reasons": reasons}


async def aggregate(request: web.Request) -> web.Response:
    """`overall_health`: the worst component, where an ML (treatment-only) upstream that is
    down counts as degraded, since fallback keeps users on deterministic answers."""
    components: dict[str, object] = {}
    statuses = []
    plane = request.app.get(PLANE)
    if plane is not None:
        try:
            upstreams = await plane.health()
        except StoreUnavailable as exc:  # restarting: nothing answers users meanwhile
            components["data_plane"] = {"status": UNHEALTHY, "reasons": [str(exc)]}
            statuses.append(UNHEALTHY)
        else:
            components["upstreams"] = upstreams
            for report in upstreams.values():
                status = str(report["status"])
                statuses.append(status if report["critical"] or status != UNHEALTHY else DEGRADED)
    backend = request.app.get(BACKEND)
    flag_store = _flag_store(backend)
    components["flag_store"] = flag_store
    statuses.append(str(flag_store["status"]))
    if backend is not None and backend.store is not None:
        interval = plane.heartbeat_interval if plane is not None else 1.0
        instances = await _instances(backend.store, interval)
        components["instances"] = instances
        statuses.append(str(instances["status"]))
    worker = request.app.get(WORKER)
    if worker is not None:
        now = time.time()
        age = now - worker.last_run if worker.last_run else None
        reasons = []
        if worker.last_error:
            reasons.append(worker.last_error)
        reasons += [why for _, why in sorted(worker.failing.items())]
        late = 3 * worker.interval + 5  # a start's first evaluation is as late as any other
        if age is None and now - worker.started_at > late:
            reasons.append(f"no evaluation yet, {now - worker.started_at:.0f}s after the start")
        elif age is not None and age > late:
            reasons.append(f"last evaluation {age:.0f}s ago")
        components["statistics_worker"] = {
            "status": DEGRADED if reasons else HEALTHY,
            "last_evaluation_age_seconds": age,
            "evaluation_errors": dict(worker.evaluation_errors),
            "reasons": reasons,
        }
        statuses.append(DEGRADED if reasons else HEALTHY)
    history = request.app.get(HISTORY)
    writers = [history_report(history)] if history is not None else []
    if history is not None and plane is not None:  # abgate run: the data plane's decisions
        with contextlib.suppress(StoreUnavailable):  # away: reported above
            remote = await plane.history()
            if remote is not None:
                writers.append(remote)
    if writers:  # down: degraded (answers go on; records wait or are dropped)
        reasons = [str(w["last_error"]) for w in writers if w["last_error"]]
        connected = all(w["connected"] for w in writers)
        if not connected and not reasons:
            reasons.append("not connected to PostgreSQL (yet)")
        status = DEGRADED if reasons else HEALTHY
        components["history_store"] = {
            "status": status,
            "connected": connected,
            "buffered": sum(int(w["buffered"]) for w in writers),
            "dropped": sum(int(w["dropped"]) for w in writers),
            "written": sum(int(w["written"]) for w in writers),
            "layout": writers[0]["layout"],
            "reasons": reasons,
        }
        statuses.append(status)
    reloader = request.app.get(RELOADER)
    if reloader is not None:
        config_health = config_report(reloader)
        components["config"] = config_health
        statuses.append(str(config_health["status"]))
    rollouts = request.app.get(CONTROLLER)
    if rollouts is not None:
        status = DEGRADED if rollouts.failing else HEALTHY
        components["rollout_controller"] = {
            "status": status,
            "acting": rollouts.acting,
            "errors": dict(rollouts.errors),
            "reasons": [f"{name}: {why}" for name, why in sorted(rollouts.failing.items())],
        }
        statuses.append(status)
    overall = worst(*statuses)
    shadows: list[dict[str, object]] = []
    if plane is not None:
        with contextlib.suppress(StoreUnavailable):  # away: said in components
            shadows = await plane.shadow_stats()
    ml = ml_components(plane.config if plane is not None else None, shadows, components)
    return answer(
        AggregateAnswer.model_validate(
            {"overall_health": overall, "components": components, "ml_components": ml}
        ),
        503 if overall == UNHEALTHY else 200,
    )


def config_report(reloader: Reloader) -> dict[str, object]:
    """Degraded while the file's last reload was refused: the proxy serves the config loaded
    before it, which is not what the file says (a later good or reverted file clears it)."""
    last = reloader.last
    report: dict[str, object] = {
        "status": HEALTHY,
        "source": str(reloader.path),
        "loaded_at": reloader.loaded_at,
        "reasons": [],
    }
    if reloader.refused:
        assert last is not None
        first = last.problems[0] if last.problems else "no detail"
        more = f" (and {len(last.problems) - 1} more)" if len(last.problems) > 1 else ""
        report["status"] = DEGRADED
        report["reasons"] = [
            f"config reload ({last.trigger}) refused: {first}{more}; serving the config "
            f"loaded at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(reloader.loaded_at))}"
        ]
    return report


def ml_components(
    config: Config | None, shadows: list[dict[str, object]], components: dict[str, object]
) -> list[object]:
    """The ML side, one entry each, from what `components` already holds: each ML upstream
    (a treatment that is no experiment's control) and its breaker, each experiment's shadow
    (`shadows`, as the data plane reports them), the statistics worker and the rollout
    controller. `config` is None where there is no data plane."""
    out: list[object] = []
    if config is not None:
        controls = {e.control.upstream for e in config.experiments.values()}
        ml = sorted({e.treatment.upstream for e in config.experiments.values()} - controls)
        upstreams = components.get("upstreams", {})
        assert isinstance(upstreams, dict)
        for name in ml:
            report = upstreams.get(name, {})
            out.append(
                {
                    "name": name,
                    "kind": "ml_upstream",
                    "status": report.get("status"),
                    "reasons": report.get("reasons", []),
                }
            )
            state = str(report.get("breaker"))
            out.append(
                {
                    "name": f"{name} breaker",
                    "kind": "breaker",
                    "status": _BREAKER_HEALTH.get(state, UNHEALTHY),
                    "state": state,
                }
            )
        for shadow in shadows:
            in_a_row = int(str(shadow.get("dropped_in_a_row", 0)))
            dropping = in_a_row >= SHADOW_DROPPING
            out.append(
                {
                    "name": f"{shadow['experiment']} shadow",
                    "kind": "shadow",
                    "status": DEGRADED if dropping else HEALTHY,
                    "total_decisions": shadow.get("total_decisions"),
                    "agreement_rate": shadow.get("agreement_rate"),
                    "dropped": shadow.get("dropped"),
                    "reasons": [
                        f"the last {in_a_row} copies were dropped, none sent: "
                        "the shadow compares nothing (see dropped)"
                    ]
                    if dropping
                    else [],
                }
            )
    for kind in ("statistics_worker", "rollout_controller"):
        report = components.get(kind)
        if isinstance(report, dict):
            out.append(
                {
                    "name": kind.replace("_", " "),
                    "kind": kind,
                    "status": report.get("status"),
                    "reasons": report.get("reasons", []),
                }
            )
    return out


_BREAKER_HEALTH = {
    "closed": HEALTHY,
    "forced_closed": HEALTHY,
    "half_open": DEGRADED,
    "open": UNHEALTHY,
    "forced_open": UNHEALTHY,
}


def add_health_routes(app: web.Application, backend: FlagBackend | None) -> None:
    """With a data plane to ask, `app[PLANE]` is set by the caller (control/api.py)."""
    if backend is not None:
        app[BACKEND] = backend
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health/aggregate", aggregate)
