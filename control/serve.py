"""Process lifecycles: `abgate run` (embedded: proxy + control API) and `abgate proxy` workers.

Each is start -> serve until SIGTERM/SIGINT -> drain -> close, built from async context
managers so that everything started is also stopped, in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from config import Config, load_config
from config.model import Listen
from control.api import check_exposure, create_control_app
from control.flag_backend import (
    FlagBackend,
    SharedState,
    initial_table,
    open_shared_state,
    start_flag_backend,
)
from control.history import attach_history, rollout_event, start_history
from control.history import collect as collect_history
from control.log import configure_logging
from control.reload import Reloader
from control.signals import on_signal, stop_on_signals
from proxy.admin import create_admin_app
from proxy.metrics import ProxyMetrics
from proxy.runtime import DataPlane
from proxy.server import JsonErrorAppRunner
from proxy.tasks import stop_task
from state.flags import FlagTable
from state.redis_client import redis_settings
from state.redis_flags import new_instance_id
from state.rollouts import Lease, MemoryRollouts, RedisRollouts, RolloutStore

if TYPE_CHECKING:
    from control.rollout.controller import RolloutController
    from control.stats_worker import StatsWorker
    from state.history.writer import HistoryWriter

log = logging.getLogger("abgate")


def announce(line: str) -> None:
    """Lines on stdout that people (and tests) read: what listens where."""
    print(line, flush=True)


def new_registry(metrics: ProxyMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    ProcessCollector(registry=registry)
    return registry


async def app_site(
    stack: AsyncExitStack, app: web.Application, listen: Listen, shutdown_timeout: float
) -> str:
    """Serve an aiohttp Application until `stack` closes; return its URL."""
    runner = JsonErrorAppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, listen.host, listen.port)
    await site.start()
    return Listen(listen.host, runner.addresses[0][1]).url


@dataclass(frozen=True, slots=True)
class Embedded:
    """A running `abgate run` stack: where it listens and the state it shares."""

    proxy_url: str
    control_url: str
    flags: FlagTable
    metrics: ProxyMetrics
    backend: FlagBackend
    plane: DataPlane
    reloader: Reloader | None
    worker: StatsWorker
    rollouts: RolloutController
    history: HistoryWriter | None


async def owned_task(stack: AsyncExitStack, coro: Coroutine[Any, Any, None], name: str) -> None:
    """Run `coro` as a task that `stack` cancels and awaits on exit (no fire-and-forget)."""
    task = asyncio.create_task(coro, name=name)
    stack.push_async_callback(stop_task, task)  # cancelled again until it is done


async def start_stats_worker(
    stack: AsyncExitStack, config: Config, backend: FlagBackend, metrics: ProxyMetrics
) -> StatsWorker:
    from control.stats_worker import StatsWorker  # scipy: only where statistics run

    worker = StatsWorker(config, backend.measurements)
    metrics.add_gauges(worker.collect)
    await owned_task(stack, worker.run(), "abgate-stats-worker")
    return worker


async def start_rollout_controller(
    stack: AsyncExitStack,
    config: Config,
    backend: FlagBackend,
    shared: SharedState,
    metrics: ProxyMetrics,
    proxy_url: str | None = None,
) -> RolloutController:
    """The rollout controller and its store: the state file (embedded) or Redis, where a
    lease makes exactly one of several control processes act."""
    from control.rollout.controller import RolloutController

    assert backend.store is not None
    lease = None
    store: RolloutStore
    if shared.client is None:
        store = MemoryRollouts(shared.snapshot)
    else:
        lease = Lease(shared.client, config.flags.key_prefix, new_instance_id())
        stack.push_async_callback(lease.release)
        store = RedisRollouts(
            shared.client, config.flags.key_prefix, lease, durable=shared.snapshot
        )
    controller = RolloutController(
        config, backend.store, store, backend.measurements, lease=lease, proxy_url=proxy_url
    )
    metrics.add_gauges(controller.collect)
    await owned_task(stack, controller.run(), "abgate-rollout-controller")
    return controller


async def start_reloader(
    stack: AsyncExitStack,
    config_path: str | None,
    config: Config,
    plane: DataPlane,
    metrics: ProxyMetrics,
    worker: StatsWorker | None = None,
    rollouts: RolloutController | None = None,
) -> Reloader | None:
    """Hot reload of the data plane: on SIGHUP, on a change of the file, on API request."""
    if config_path is None:
        return None

    async def apply(new: Config) -> list[str]:
        warnings = plane.reload(new)
        await plane.close_retired_pools()
        if worker is not None:
            worker.config = new
        if rollouts is not None:
            rollouts.config = new
        return warnings

    reloader = Reloader(config_path, config, apply)
    metrics.add_gauges(reloader.collect)
    await owned_task(stack, reloader.run(), "abgate-config-reload")
    await stack.enter_async_context(on_signal(signal.SIGHUP, reloader.request))
    return reloader


@asynccontextmanager
async def embedded(
    config: Config, token: str | None = None, config_path: str | None = None
) -> AsyncIterator[Embedded]:
    """Data plane and control API in one process; flags in memory (or Redis when configured).
    With `config_path`, the config reloads live. Everything started here is stopped on exit,
    in reverse order."""
    check_exposure(config, token)
    flags = initial_table(config)
    metrics = ProxyMetrics()
    registry = new_registry(metrics)
    async with AsyncExitStack() as stack:
        shared = open_shared_state(stack, config)
        history = await start_history(
            stack,
            config,
            instance=new_instance_id(),
            table=flags,
            maintenance=True,
            grace=config.proxy.shutdown_timeout,
        )  # before the plane: the plane drains first, then the last flush
        plane = await stack.enter_async_context(DataPlane(config, flags, metrics))
        attach_history(history, plane, metrics, config)
        backend = await start_flag_backend(
            stack,
            config,
            flags,
            writer=True,
            shared=shared,
            proxy_address=plane.url,
            status=plane.breaker_states,
        )
        metrics.add_gauges(backend.collect)
        plane.flush_to(backend.measurements)
        worker = await start_stats_worker(stack, config, backend, metrics)
        rollouts = await start_rollout_controller(
            stack, config, backend, shared, metrics, proxy_url=plane.url
        )
        if history is not None:
            rollouts.listeners.append(rollout_event(history))
        reloader = await start_reloader(
            stack, config_path, config, plane, metrics, worker, rollouts
        )
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
        yield Embedded(
            plane.url,
            control_url,
            flags,
            metrics,
            backend,
            plane,
            reloader,
            worker,
            rollouts,
            history,
        )


async def serve_embedded(config: Config, config_path: str) -> None:
    """`abgate run` until SIGTERM/SIGINT."""
    token = os.environ.get("ABGATE_CONTROL_TOKEN") or None
    async with stop_on_signals() as stop, embedded(config, token, config_path) as running:
        announce(f"abgate proxy listening on {running.proxy_url}")
        announce(f"abgate control API listening on {running.control_url}")
        await stop.wait()
        log.info("stopping: draining in-flight requests (up to %gs)", config.proxy.shutdown_timeout)


async def serve_control(config: Config) -> None:
    """`abgate control`: the control API and flag writer, no data plane (flags in Redis)."""
    token = os.environ.get("ABGATE_CONTROL_TOKEN") or None
    check_exposure(config, token)
    if redis_settings(config) is None:
        raise ValueError(
            "abgate control needs a shared flag store: set flags.redis (or flags.redis_url, "
            "or ABGATE_REDIS_URL; without Redis, use abgate run)"
        )
    flags = initial_table(config)
    metrics = ProxyMetrics()
    registry = new_registry(metrics)
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
        metrics.add_gauges(backend.collect)
        worker = await start_stats_worker(stack, config, backend, metrics)
        rollouts = await start_rollout_controller(stack, config, backend, shared, metrics)
        if history is not None:
            rollouts.listeners.append(rollout_event(history))
            metrics.add_gauges(lambda: collect_history(history))
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
        backend = await start_flag_backend(
            stack,
            config,
            flags,
            writer=False,
            shared=shared,
            proxy_address=plane.url,
            status=plane.breaker_states,
        )
        metrics.add_gauges(backend.collect)
        if backend.sync is not None:  # measurements need a store others read: Redis
            plane.flush_to(backend.measurements)
        await start_reloader(stack, config_path, config, plane, metrics)
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


def run_embedded(config_path: str) -> None:
    uvloop.run(serve_embedded(load_config(config_path), config_path))


def run_control(config_path: str) -> None:
    uvloop.run(serve_control(load_config(config_path)))


def _worker_main(config_path: str, index: int, port: int) -> None:
    configure_logging(os.environ.get("ABGATE_LOG_LEVEL", "INFO"))
    config = load_config(config_path)
    proxy = replace(config.proxy, listen=replace(config.proxy.listen, port=port))
    uvloop.run(
        serve_worker(replace(config, proxy=proxy), index, reuse_port=True, config_path=config_path)
    )


def run_workers(config_path: str, workers: int) -> int:
    """`abgate proxy --workers N`: N processes share the proxy port with SO_REUSEPORT."""
    config = load_config(config_path)
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
            target=_worker_main, args=(config_path, index, port), name=f"abgate-worker-{index}"
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
