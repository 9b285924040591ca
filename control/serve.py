"""Process lifecycles: `abgate run` (its control process and its data plane, supervised:
control/supervisor.py), `abgate control` and `abgate proxy` workers.

Each is start -> serve until SIGTERM/SIGINT -> drain -> close, built from async context
managers so that everything started is also stopped, in reverse order. `embedded` runs both
halves of `abgate run` in this process, connected by the real live-state channel: what the
tests start.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from abgate.config import Config
from abgate.control.config_process import ParsedConfig, digest_of, dumps, loads_config, parse_file
from abgate.control.flag_backend import (
    FlagBackend,
    initial_table,
    open_shared_state,
    start_flag_backend,
)
from abgate.control.history import attach_history, rollout_event, start_history
from abgate.control.history import collect as collect_history
from abgate.control.log import configure_logging
from abgate.control.plane_half import PlaneHalf, data_plane_half
from abgate.control.reload import Reloader
from abgate.control.signals import stop_on_signals
from abgate.control.wiring import (
    Gauges,
    announce,
    app_site,
    link_timeline,
    new_registry,
    start_plane_flags,
    start_reloader,
    start_rollout_controller,
    start_stats_worker,
)
from abgate.proxy.admin import create_admin_app
from abgate.proxy.metrics import ProxyMetrics
from abgate.proxy.runtime import DataPlane
from abgate.state.flags import FlagTable
from abgate.state.redis_client import redis_settings
from abgate.state.redis_flag_sync import new_instance_id

if TYPE_CHECKING:
    from abgate.control.control_half import ControlHalf
    from abgate.control.rollout.controller import RolloutController
    from abgate.control.stats_worker import StatsWorker
    from abgate.state.history.writer import HistoryWriter

log = logging.getLogger("abgate")


@dataclass(frozen=True, slots=True)
class Embedded:
    """Both halves of `abgate run` in one process (tests): where they listen and what they
    hold. `flags` is the store's table; `plane` and `metrics` the data plane's."""

    proxy_url: str
    control_url: str
    flags: FlagTable
    metrics: ProxyMetrics
    backend: FlagBackend
    plane: DataPlane
    reloader: Reloader | None
    worker: StatsWorker
    rollouts: RolloutController
    history: HistoryWriter | None  # the data plane's: its decisions
    control: ControlHalf
    data: PlaneHalf


@asynccontextmanager
async def embedded(
    config: Config, token: str | None = None, config_path: str | None = None
) -> AsyncIterator[Embedded]:
    """`abgate run`'s two halves in this process, on one loop, talking over the live-state
    channel as the two processes do. With `config_path`, the config reloads live."""
    from abgate.control.control_half import control_half  # see serve_control

    blob = dumps(config)
    digest = digest_of(config) if config_path is not None else None
    with tempfile.TemporaryDirectory(prefix="abgate-") as directory:
        channel = Path(directory) / "live.sock"
        async with (
            control_half(
                config,
                channel,
                token=token,
                config_path=config_path,
                parsed=ParsedConfig(config, blob, digest) if digest is not None else None,
            ) as control,
            data_plane_half(config, channel, config_digest=digest) as data,
        ):
            yield Embedded(
                data.proxy_url,
                control.control_url,
                control.flags,
                data.metrics,
                control.backend,
                data.plane,
                control.reloader,
                control.worker,
                control.rollouts,
                data.history,
                control,
                data,
            )


async def serve_control(config: Config) -> None:
    """`abgate control`: the control API and flag writer, no data plane (flags in Redis)."""
    # Imported here: the control API's payload models (pydantic) are nothing a data-plane
    # worker (abgate proxy, which imports this module) needs to load.
    from abgate.control.api import check_exposure, create_control_app

    token = os.environ.get("ABGATE_CONTROL_TOKEN") or None
    check_exposure(config, token)
    if redis_settings(config) is None:
        raise ValueError(
            "abgate control needs a shared flag store: set flags.redis (or flags.redis_url, "
            "or ABGATE_REDIS_URL; without Redis, use abgate run)"
        )
    flags = initial_table(config)
    gauges = Gauges()
    registry = new_registry(gauges)
    async with stop_on_signals() as stop, AsyncExitStack() as stack:
        shared = open_shared_state(stack, config)
        history = await start_history(
            stack, config, instance=new_instance_id(), table=flags, maintenance=True, grace=5.0
        )
        backend = await start_flag_backend(
            stack,
            config,
            flags,
            writer=True,
            proxy_address=None,
            shared=shared,
        )
        gauges.add_gauges(backend.collect)
        worker = await start_stats_worker(stack, config, backend, gauges, history)
        rollouts = await start_rollout_controller(stack, config, backend, shared, gauges, worker)
        link_timeline(worker, rollouts)  # no data plane here: no latency on its timeline
        if history is not None:
            rollouts.listeners.append(rollout_event(history))
            gauges.add_gauges(lambda: collect_history(history))
        assert backend.store is not None
        control_app = create_control_app(
            backend.store,
            registry,
            token,
            backend=backend,
            worker=worker,
            rollouts=rollouts,
            history=history,
            loopback=config.control.is_loopback,
        )
        control_url = await app_site(stack, control_app, config.control.listen, 5.0)
        announce(f"abgate control API listening on {control_url}")
        await stop.wait()


@dataclass(frozen=True, slots=True)
class Worker:
    """A running data-plane process (`abgate proxy`): proxy and admin listeners."""

    proxy_url: str
    admin_url: str
    flags: FlagTable
    backend: FlagBackend


@asynccontextmanager
async def worker(
    config: Config, index: int = 0, *, reuse_port: bool = False, config_path: str | None = None
) -> AsyncIterator[Worker]:
    """One data-plane worker: the proxy listener, its flag sync, its admin listener."""
    flags = initial_table(config)
    metrics = ProxyMetrics()
    registry = new_registry(metrics)
    admin = config.proxy.admin
    admin = replace(admin, port=admin.port + index if admin.port else 0)
    async with AsyncExitStack() as stack:
        shared = open_shared_state(stack, config)
        history = await start_history(
            stack,
            config,
            instance=new_instance_id(),
            table=None,
            maintenance=False,
            grace=config.proxy.shutdown_timeout,
        )
        plane = await stack.enter_async_context(
            DataPlane(config, flags, metrics, reuse_port=reuse_port, worker_index=index)
        )
        attach_history(history, plane, metrics, config)
        backend = await start_plane_flags(stack, config, flags, shared, plane, metrics)

        async def apply(new: ParsedConfig) -> list[str]:
            warnings = await plane.reload_in_steps(new.config)
            await plane.close_retired_pools()
            return warnings

        await start_reloader(stack, config_path, config, apply, metrics)
        admin_url = await app_site(stack, create_admin_app(registry), admin, 1.0)
        yield Worker(plane.url, admin_url, flags, backend)


async def serve_worker(
    config: Config, index: int, reuse_port: bool, config_path: str | None = None
) -> None:
    async with (
        stop_on_signals() as stop,
        worker(config, index, reuse_port=reuse_port, config_path=config_path) as w,
    ):
        announce(
            f"abgate worker {index} (pid {os.getpid()}) proxy listening on "
            f"{w.proxy_url}, admin on {w.admin_url}"
        )
        await stop.wait()


def run_control(config_path: str) -> None:
    from abgate.config.parse import load_config  # the parser: only where a file is read

    uvloop.run(serve_control(load_config(config_path)))


def _worker_main(blob: bytes, config_path: str, index: int, port: int) -> None:
    """A worker gets the config its parent parsed (pickled): it never loads the parser."""
    configure_logging(os.environ.get("ABGATE_LOG_LEVEL", "INFO"))
    config = loads_config(blob)
    proxy = replace(config.proxy, listen=replace(config.proxy.listen, port=port))
    uvloop.run(
        serve_worker(replace(config, proxy=proxy), index, reuse_port=True, config_path=config_path)
    )


def run_workers(config_path: str, workers: int) -> int:
    """`abgate proxy --workers N`: N processes share the proxy port with SO_REUSEPORT."""
    parsed = parse_file(config_path)
    config = parsed.config
    if workers == 1:
        uvloop.run(serve_worker(config, 0, reuse_port=False, config_path=config_path))
        return 0
    listen = config.proxy.listen
    # Port 0 must resolve to one port that every worker then shares: hold it while they bind.
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((listen.host, listen.port))
    port = holder.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker_main,
            args=(parsed.blob, config_path, index, port),
            name=f"abgate-worker-{index}",
        )
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    holder.close()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    previous = {
        sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        for process in processes:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [p.name for p in processes if p.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        log.error("workers exited abnormally: %s", ", ".join(failed))
        return 1
    return 0
