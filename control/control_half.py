"""The control half of `abgate run`: everything but proxying, in a process of its own.

The control API, the statistics worker, the rollout controller, config parsing for reloads
and the embedded flag store with its measurements and state file live here; the data plane
(control/plane_half.py) is another process, reached over the live-state channel
(state/live_server.py): flag changes go to it, its measurement batches come back, and the
control API asks it for breakers, health, metrics and reloads (control/live_plane.py). A
statistics tick, a slow reply from Redis or a large config then costs this process's loop,
never the proxy's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from abgate.config import Config
from abgate.config.errors import ConfigError, Problem
from abgate.config.metrics_catalogue import CONTROL_PROCESS
from abgate.control.api import check_exposure, create_control_app
from abgate.control.config_process import ParsedConfig
from abgate.control.flag_backend import (
    FlagBackend,
    initial_table,
    open_shared_state,
    start_flag_backend,
)
from abgate.control.history import collect as collect_history
from abgate.control.history import rollout_event, start_history
from abgate.control.live_plane import RemotePlane
from abgate.control.reload import Reloader
from abgate.control.wiring import (
    Gauges,
    app_site,
    link_timeline,
    new_registry,
    start_reloader,
    start_rollout_controller,
    start_stats_worker,
)
from abgate.state.flags import FlagStore, FlagTable
from abgate.state.live_server import LiveStateServer, PlaneLink
from abgate.state.measurements import MemoryMeasurements
from abgate.state.redis_flag_sync import new_instance_id

if TYPE_CHECKING:
    from abgate.control.rollout.controller import RolloutController
    from abgate.control.stats_worker import StatsWorker
    from abgate.state.history.writer import HistoryWriter


log = logging.getLogger("abgate")
SCHEMA_WAIT = 5.0  # seconds: the history schema is migrated before the data plane starts


@dataclass(frozen=True, slots=True)
class ControlHalf:
    control_url: str
    flags: FlagTable  # the store's: what the control API and the controller read
    store: FlagStore
    backend: FlagBackend
    server: LiveStateServer
    reloader: Reloader | None
    worker: StatsWorker
    rollouts: RolloutController
    history: HistoryWriter | None


@asynccontextmanager
async def control_half(
    config: Config,
    channel: str | Path,
    *,
    token: str | None = None,
    config_path: str | None = None,
    parsed: ParsedConfig | None = None,
    wait_for_plane: float = 0.0,
) -> AsyncIterator[ControlHalf]:
    """Listen on `channel` for the data plane, serve the control API; stop everything on
    exit, in reverse order (the measurements are saved last, after the channel closed).
    `parsed` is the config file as this process read it: a data plane that runs another
    (it restarted after the file changed) is sent this one. `wait_for_plane`: seconds to
    wait for the data plane's hello before the control API opens (a restarted control
    process without a state file learns the live flags from it before anyone writes)."""
    check_exposure(config, token)
    flags = initial_table(config)
    gauges = Gauges()
    registry = new_registry(gauges, process=CONTROL_PROCESS)
    current = [parsed]  # the config a data plane should run, replaced by each reload
    async with AsyncExitStack() as stack:
        shared = open_shared_state(stack, config)
        history = await start_history(
            stack,
            config,
            instance=new_instance_id(),
            table=flags,
            maintenance=True,
            grace=config.proxy.shutdown_timeout,
        )
        if history is not None:  # the schema first, before the data plane's writer starts
            with contextlib.suppress(Exception):  # down: both retry, with backoff
                await asyncio.wait_for(history.flush(), SCHEMA_WAIT)
        embedded = shared.client is None
        server = LiveStateServer(
            channel,
            flags,
            owns_flags=embedded,
            measurements=shared.measurements
            if isinstance(shared.measurements, MemoryMeasurements)
            else None,
            config=lambda: (current[0].digest, current[0].blob) if current[0] else (None, None),
        )
        backend = await start_flag_backend(
            stack,
            config,
            flags,
            writer=True,
            shared=shared,
            proxy_address=None,
            live=server if embedded else None,
        )
        gauges.add_gauges(backend.collect)
        await stack.enter_async_context(server)  # after the restore: hellos get its flags
        gauges.add_gauges(server.collect)
        if history is not None:
            gauges.add_gauges(lambda: collect_history(history))
        worker = await start_stats_worker(stack, config, backend, gauges, history)
        rollouts = await start_rollout_controller(stack, config, backend, shared, gauges, worker)
        if history is not None:
            rollouts.listeners.append(rollout_event(history))

        def hello(link: PlaneLink) -> None:  # a stage's load test goes where it listens
            rollouts.proxy_url = link.address

        server.on_hello.append(hello)
        plane = RemotePlane(server, config)
        link_timeline(worker, rollouts, plane.latency_counts)
        if history is not None:  # outcomes by request id look up the data plane's decisions
            history.flush_first.append(plane.flush_history)

        async def apply(new: ParsedConfig) -> list[str]:
            # the rule `abgate run` and check-config apply: a reload must not accept a file
            # the next start would refuse (a trial reloaded 0.0.0.0 without a token)
            exposure = new.config.control.exposure_problem(token)
            if exposure is not None:
                raise ConfigError(str(config_path), [Problem("control.listen", None, exposure)])
            warnings = await plane.reload(new.blob)
            for name, experiment in new.config.experiments.items():
                flags.ensure(name, experiment.percentage_bp)
            worker.config = rollouts.config = plane.config = new.config
            current[0] = new
            return warnings

        reloader = await start_reloader(stack, config_path, config, apply, gauges)
        if wait_for_plane and not await server.connected(wait_for_plane):
            log.warning("no data plane within %gs; the control API opens anyway", wait_for_plane)
        assert backend.store is not None
        control_app = create_control_app(
            backend.store,
            registry,
            token,
            reloader,
            plane,
            backend,
            worker,
            rollouts,
            history,
            loopback=config.control.is_loopback,
        )
        control_url = await app_site(
            stack, control_app, config.control.listen, config.proxy.shutdown_timeout
        )
        yield ControlHalf(
            control_url,
            flags,
            backend.store,
            backend,
            server,
            reloader,
            worker,
            rollouts,
            history,
        )
