"""Which experiment `current` means, where a path or a call takes an experiment and none is
named: the one whose rollout is under way, else `control.default_experiment`, else the only
one. Only a real ambiguity is an error, and it names the choices."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from abgate.config import Config
from abgate.config.fields import shown
from abgate.control.http import CONTROLLER, WORKER, ApiError
from abgate.state.rollouts import FINISHED

if TYPE_CHECKING:
    from abgate.control.stats_worker import StatsWorker

CURRENT = "current"


def require_worker(request: web.Request) -> StatsWorker:
    worker = request.app.get(WORKER)
    if worker is None:
        raise ApiError(
            404, "no statistics here: serve the control API with abgate run or abgate control"
        )
    return worker


def config_of(app: web.Application) -> Config | None:
    """The running config, as the last reload left it (None: no control process here)."""
    controller = app.get(CONTROLLER)
    if controller is not None:
        return controller.config  # reloads replace it here and in the worker alike
    worker = app.get(WORKER)
    return worker.config if worker is not None else None


def _config(app: web.Application) -> Config:
    config = config_of(app)
    if config is None:
        raise ApiError(
            404, "no experiments here: serve the control API with abgate run or abgate control"
        )
    return config


async def under_way(app: web.Application) -> list[str]:
    """Experiments whose rollout is started and not finished (paused and escalated too)."""
    controller = app.get(CONTROLLER)
    if controller is None:
        return []
    return [
        r.experiment
        for r in await controller.rollouts.all()
        if r.state not in FINISHED and r.state != "pending"
    ]


async def resolve(app: web.Application, name: object = CURRENT) -> str:
    """An experiment's name from what was given: a name (404 when unknown), or `current` /
    nothing (None)."""
    config = _config(app)
    experiments = list(config.experiments)
    if name is not None and name != CURRENT:
        if not isinstance(name, str) or name not in config.experiments:
            raise ApiError(404, f"unknown experiment {shown(name)}")
        return name
    default = config.control.default_experiment
    rolling = [n for n in await under_way(app) if n in config.experiments]
    if len(rolling) == 1:
        return rolling[0]
    if len(rolling) > 1:
        if default in rolling:
            return default
        raise ApiError(
            400,
            f"'current' is ambiguous: rollouts of {', '.join(rolling)} are under way; name "
            "one (or set control.default_experiment)",
        )
    if default is not None:
        return default
    if len(experiments) == 1:
        return experiments[0]
    raise ApiError(
        400,
        f"'current' is ambiguous: no rollout is under way, no control.default_experiment, "
        f"and there are {len(experiments)} experiments: {', '.join(experiments) or 'none'}; "
        "name one",
    )
