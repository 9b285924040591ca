"""The pieces every process's wiring uses (control/serve.py, control/control_half.py,
control/plane_half.py): listeners, owned tasks, the statistics worker, the rollout
controller, the reloader, and where their gauges go."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from abgate.config import Config
from abgate.config.model import Listen
from abgate.control.app_runner import JsonErrorAppRunner
from abgate.control.flag_backend import FlagBackend, SharedState, start_flag_backend
from abgate.control.reload import Apply, Reloader
from abgate.control.signals import on_signal
from abgate.proxy.metrics import ProxyMetrics
from abgate.proxy.runtime import DataPlane
from abgate.state.flags import FlagTable
from abgate.state.redis_flag_sync import new_instance_id
from abgate.state.rollouts import Lease, MemoryRollouts, RedisRollouts, RolloutStore
from abgate.state.tasks import stop_task

FIRST_READ_WAIT = 3.0  # seconds a starting data plane waits for the shared flags

if TYPE_CHECKING:
    from abgate.control.rollout.controller import RolloutController
    from abgate.control.stats_worker import StatsWorker
    from abgate.state.history.writer import HistoryWriter


def announce(line: str) -> None:
    """Lines on stdout that people (and tests) read: what listens where."""
    print(line, flush=True)


class GaugeSink(Protocol):
    def add_gauges(self, source: Callable[[], Iterable[Metric]]) -> None: ...


class Gauges(Collector):
    """Families computed from live state at scrape time, for a process without traffic
    counters of its own (a control process)."""

    def __init__(self) -> None:
        self._sources: list[Callable[[], Iterable[Metric]]] = []

    def add_gauges(self, source: Callable[[], Iterable[Metric]]) -> None:
        self._sources.append(source)

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source()


def new_registry(collector: Collector, *, process: str = "") -> CollectorRegistry:
    """`collector` and this process's CPU and memory: `process_*`, or `{process}_process_*`
    (`abgate run`'s control process: its data plane's are `process_*`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(namespace=process, registry=registry)
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


async def owned_task(stack: AsyncExitStack, coro: Coroutine[Any, Any, None], name: str) -> None:
    """Run `coro` as a task that `stack` cancels and awaits on exit (no fire-and-forget)."""
    task = asyncio.create_task(coro, name=name)
    stack.push_async_callback(stop_task, task)  # cancelled again until it is done


async def start_stats_worker(
    stack: AsyncExitStack,
    config: Config,
    backend: FlagBackend,
    gauges: GaugeSink,
    history: HistoryWriter | None = None,
) -> StatsWorker:
    """With the history store, the timeline is kept in PostgreSQL too (and read back first)."""
    from abgate.control.offload import StatisticsProcess
    from abgate.control.stats_worker import StatsWorker  # scipy: only where statistics run
    from abgate.control.timeline_store import TimelineStore

    statistics = StatisticsProcess()  # shared with the rollout controller; shut down last
    stack.push_async_callback(statistics.aclose)
    worker = StatsWorker(config, backend.measurements, offload=statistics)
    if history is not None:
        worker.timeline_store = TimelineStore(history)
    gauges.add_gauges(worker.collect)
    await owned_task(stack, worker.run(), "abgate-stats-worker")
    return worker


def link_timeline(
    worker: StatsWorker,
    controller: RolloutController,
    latency: Callable[[], Awaitable[dict[str, dict[str, list[int]]]]] | None = None,
) -> None:
    """The timeline's other sources: the controller's state and decisions at each tick,
    its history entries as they happen, and the data plane's latency histograms."""
    from abgate.control.rollout.errors import RolloutError
    from abgate.control.timeline import RolloutView

    def view(name: str) -> RolloutView | None:
        rollout = next((r for r in controller.current if r.experiment == name), None)
        if rollout is None:
            return None
        try:
            plan = controller.plan_of(rollout)
        except RolloutError:
            plan = None
        decision = controller.last_decision(name)
        return RolloutView(
            rollout.state,
            rollout.stage_index,
            rollout.decision,
            decision.kind if decision is not None else "",
            rollout.reason,
            rollout.eta_seconds,
            decision.needed if decision is not None else {},
            plan,
        )

    worker.rollout_view = view
    worker.latency = latency
    if worker.timeline_store is not None:  # several control processes: the acting one writes
        worker.timeline_store.acting = lambda: controller.acting
    controller.listeners.append(worker.rollout_event)


async def start_rollout_controller(
    stack: AsyncExitStack,
    config: Config,
    backend: FlagBackend,
    shared: SharedState,
    gauges: GaugeSink,
    worker: StatsWorker,
) -> RolloutController:
    """The rollout controller and its store: the state file (embedded) or Redis, where a
    lease makes exactly one of several control processes act. It shares the statistics
    worker's reads, so the gates decide on the read the page shows, and its process."""
    from abgate.control.rollout.controller import RolloutController

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
        config,
        backend.store,
        store,
        backend.measurements,
        lease=lease,
        reads=worker.reads,
        offload=worker.offload,
    )
    gauges.add_gauges(controller.collect)
    await owned_task(stack, controller.run(), "abgate-rollout-controller")
    return controller


async def start_reloader(
    stack: AsyncExitStack,
    config_path: str | None,
    config: Config,
    apply: Apply,
    gauges: GaugeSink,
    *,
    on_sighup: bool = True,
) -> Reloader | None:
    """Hot reload: on SIGHUP, on a change of the file, on API request."""
    if config_path is None:
        return None
    reloader = Reloader(config_path, config, apply)
    gauges.add_gauges(reloader.collect)
    await owned_task(stack, reloader.run(), "abgate-config-reload")
    if on_sighup:
        await stack.enter_async_context(on_signal(signal.SIGHUP, reloader.request))
    return reloader


async def start_plane_flags(
    stack: AsyncExitStack,
    config: Config,
    flags: FlagTable,
    shared: SharedState,
    plane: DataPlane,
    metrics: ProxyMetrics,
) -> FlagBackend:
    """A data plane's flags from the shared store (with Redis: read, and this instance
    registered with its breaker states), and where its measurements go (Redis)."""
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
        # Announce (and route) with the shared flags rather than the config's starting ones,
        # as Envoy's init manager waits for its first configuration: a bounded wait for the
        # first read. Redis away at the start: the snapshot or the defaults, as documented.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(backend.sync.connected_event.wait(), FIRST_READ_WAIT)
    return backend
