"""Wiring: one Config -> pools, destinations, route table, splitters, counters, listener.

The one place where the proxy's parts are put together. `DataPlane` is an async context
manager: entering binds the listener; leaving drains in-flight requests, then closes pools.
`reload` swaps in a new config without a restart: the next request uses it, requests in
flight finish on the old one, pools of unchanged upstreams are kept.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from time import perf_counter
from types import TracebackType

from prometheus_client.core import Metric

from abgate.config import metrics_catalogue
from abgate.config.model import Config, ExperimentConfig, Listen, MetricConfig
from abgate.proxy.breaker import Breaker, BreakerState
from abgate.proxy.handler import Destination, ExperimentRoute, ProxyHandler, Routing, Target
from abgate.proxy.health import ActiveCheck, upstream_health
from abgate.proxy.measure import ArmRecorder, Measurements, MetricExtractor, PhaseRef
from abgate.proxy.metrics import ProxyMetrics, gauge
from abgate.proxy.outcome import OutcomeSink, arm_statistics
from abgate.proxy.pool import UpstreamPool
from abgate.proxy.rebuild import rebuild
from abgate.proxy.retry_budget import RetryBudget
from abgate.proxy.routing import Entry, Router, entry
from abgate.proxy.server import HttpListener, check_file_limit
from abgate.proxy.shadow import Shadow
from abgate.proxy.split import Splitter
from abgate.state.flags import Flag, FlagTable
from abgate.state.measurements import MeasurementStore, Phase
from abgate.state.tasks import stop_task, stop_tasks

ROUTES_PER_STEP = 500  # compiled between two passes of the loop in a reload (~0.5-3 ms)


class DataPlane:
    def __init__(
        self,
        config: Config,
        flags: FlagTable,
        metrics: ProxyMetrics,
        *,
        listen: Listen | None = None,
        reuse_port: bool = False,
        worker_index: int = 0,
    ) -> None:
        self.config = config
        self.flags = flags
        self.metrics = metrics
        self._listen = listen or config.proxy.listen
        self._reuse_port = reuse_port
        seed = config.proxy.random_seed
        self._rng = random.Random(None if seed is None else seed + worker_index)
        self._pools: dict[str, UpstreamPool] = {}
        self.breakers: dict[str, Breaker] = {}
        self.shadows: dict[str, Shadow] = {}
        self.checks: dict[str, ActiveCheck] = {}
        self._check_tasks: list[asyncio.Task[None]] = []
        self._retired_checks: list[asyncio.Task[None]] = []
        self._retired_shadows: list[Shadow] = []
        self._budget = RetryBudget(
            config.proxy.retry_budget_ratio, config.proxy.retry_min_per_second
        )
        self._splitters: dict[str, Splitter] = {}
        self._reloading = asyncio.Lock()
        self._retired: list[UpstreamPool] = []
        self._store: MeasurementStore | None = None
        self.measurements = Measurements()
        self._phases: dict[str, PhaseRef] = {}
        self._stack = AsyncExitStack()
        self.listener: HttpListener | None = None
        self.handler: ProxyHandler | None = None
        self._sinks: list[OutcomeSink] = [metrics, arm_statistics]

    async def __aenter__(self) -> DataPlane:
        async with AsyncExitStack() as stack:
            self._pools = {
                name: UpstreamPool(upstream) for name, upstream in self.config.upstreams.items()
            }
            self._update_breakers()
            stack.push_async_callback(self._close_pools)
            self._start_checks()
            stack.push_async_callback(self._stop_checks)
            handler = self.handler = ProxyHandler(self._routing(), self.metrics, self._sinks)
            stack.callback(self.flags.subscribe(self._on_flag))
            self.metrics.add_gauges(self._gauges)
            check_file_limit(
                self.config.proxy.max_connections
                + 64
                + sum(upstream.pool_size for upstream in self.config.upstreams.values())
            )
            self.listener = await stack.enter_async_context(
                HttpListener(handler, self._listen, self.config.proxy, reuse_port=self._reuse_port)
            )
            self._stack = stack.pop_all()
        return self

    def add_sink(self, sink: OutcomeSink) -> None:
        """One more consumer of the per-request outcome records (see proxy.outcome)."""
        self._sinks.append(sink)
        if self.handler is not None:
            self.handler.sinks = tuple(self._sinks)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        if self._store is not None:  # after the listener drained: the last requests count
            await self.measurements.flush(self._store)

    async def flush_measurements(self) -> None:
        """Hand pending sums to the store now (the flusher does it every second)."""
        if self._store is not None:
            await self.measurements.flush(self._store)

    def flush_to(self, store: MeasurementStore) -> None:
        """Flush measurements into `store` once a second from an owned task."""
        self._store = store
        task = asyncio.create_task(
            self.measurements.run_forever(store), name="abgate-measurement-flush"
        )
        self._stack.push_async_callback(stop_task, task)

    @property
    def url(self) -> str:
        assert self.listener is not None
        return self.listener.url

    def reload(self, config: Config) -> list[str]:
        """Apply `config` to the next request. Returns what could not be applied live."""
        warnings = self._apply(config)
        assert self.handler is not None
        self.handler.routing = self._routing()  # one assignment: the swap is atomic
        return warnings

    async def reload_in_steps(self, config: Config) -> list[str]:
        """`reload`, with the route table compiled ROUTES_PER_STEP routes at a time and the
        loop serving requests (on the routing in use) between steps: a config of 24,000
        routes would otherwise hold the loop for its whole rebuild (20-150 ms). One swap."""
        async with self._reloading:  # one at a time: each step reads the plane's config
            warnings = self._apply(config)
            for routing in self._routing_steps():
                if routing is None:
                    await asyncio.sleep(0)
                    continue
                assert self.handler is not None
                self.handler.routing = routing
            return warnings

    def _apply(self, config: Config) -> list[str]:
        """Everything of `config` but the routing: pools, budget, flags, breakers, checks."""
        warnings = [
            f"{what} changed: restart to apply"
            for what, old, new in (
                ("proxy.listen", self.config.proxy.listen, config.proxy.listen),
                ("proxy.admin_listen", self.config.proxy.admin, config.proxy.admin),
                ("control.listen", self.config.control.listen, config.control.listen),
                ("flags", self.config.flags, config.flags),
            )
            if old != new
        ]
        self._pools, retired = rebuild(
            self._pools, config.upstreams, lambda _, upstream: UpstreamPool(upstream)
        )
        self._retired += retired
        if (config.proxy.retry_budget_ratio, config.proxy.retry_min_per_second) != (
            self.config.proxy.retry_budget_ratio,
            self.config.proxy.retry_min_per_second,
        ):
            refused = self._budget.exhausted  # the counter stays monotonic across reloads
            self._budget = RetryBudget(
                config.proxy.retry_budget_ratio, config.proxy.retry_min_per_second
            )
            self._budget.exhausted = refused
        for name, experiment in config.experiments.items():
            self.flags.ensure(name, experiment.percentage_bp)
        self.config = config
        self._update_breakers()
        self._retired_checks += self._check_tasks  # cancelled now, awaited with the pools
        for task in self._check_tasks:
            task.cancel()
        self._check_tasks = []
        self._start_checks()
        return warnings

    async def close_retired_pools(self) -> None:
        """Close pools a reload replaced; their busy connections close as exchanges end."""
        retired, self._retired = self._retired, []
        for pool in retired:
            await pool.close()
        checks, self._retired_checks = self._retired_checks, []
        await stop_tasks(checks)
        shadows, self._retired_shadows = self._retired_shadows, []
        for shadow in shadows:
            await shadow.aclose()

    def _update_breakers(self) -> None:
        """One breaker per upstream; kept (with its state) while its settings stay the same."""
        self.breakers, _ = rebuild(
            self.breakers,
            {name: upstream.breaker for name, upstream in self.config.upstreams.items()},
            lambda name, config: Breaker(name, config, self._on_breaker_transition),
        )

    def _on_breaker_transition(
        self, breaker: Breaker, old: BreakerState, new: BreakerState, reason: str
    ) -> None:
        self.metrics.count_breaker_transition(breaker.name, old.label, new.label)

    def _start_checks(self) -> None:
        self.checks = {}
        for name, upstream in self.config.upstreams.items():
            if upstream.health_check is None:
                continue
            host = upstream.host if upstream.port == 80 else f"{upstream.host}:{upstream.port}"
            check = self.checks[name] = ActiveCheck(
                self._pools[name], upstream.health_check, host.encode("idna")
            )
            self._check_tasks.append(asyncio.create_task(check.run(), name=f"abgate-health-{name}"))

    async def _stop_checks(self) -> None:
        tasks = self._check_tasks + self._retired_checks
        self._check_tasks, self._retired_checks = [], []
        await stop_tasks(tasks)

    # What the control API reads and changes, through methods only (never the dicts).

    def breaker_snapshots(self) -> list[dict[str, object]]:
        now = perf_counter()
        return [breaker.snapshot(now) for breaker in self.breakers.values()]

    def force_breaker(self, upstream: str, state: BreakerState | None) -> dict[str, object]:
        """Force one upstream's breaker open or closed, or back to auto (None); KeyError for
        an unknown upstream. Returns its snapshot."""
        breaker = self.breakers[upstream]
        breaker.force(state, perf_counter())
        return breaker.snapshot(perf_counter())

    def shadow_stats(self) -> list[dict[str, object]]:
        return [shadow.stats() for shadow in self.shadows.values()]

    def breaker_states(self) -> dict[str, str]:
        return {name: breaker.state.label for name, breaker in self.breakers.items()}

    def health(self) -> dict[str, dict[str, object]]:
        """Each upstream's health; `critical` when users depend on it (a control arm or a
        route's only upstream), not for an ML arm that fallback covers."""
        now = perf_counter()
        critical = {e.control.upstream for e in self.config.experiments.values()}
        critical |= {r.upstream for r in self.config.routes if r.upstream is not None}
        return {
            name: {
                **upstream_health(breaker, self.checks.get(name), now),
                "critical": name in critical,
            }
            for name, breaker in self.breakers.items()
        }

    def _update_shadows(self) -> None:
        """One Shadow per experiment that has one; kept (with its stats) while unchanged."""
        self.shadows, retired = rebuild(
            self.shadows,
            {
                name: experiment.shadow
                for name, experiment in self.config.experiments.items()
                if experiment.shadow is not None
            },
            lambda name, config: Shadow(name, config, self._rng),
        )
        self._retired_shadows += retired

    def _routing(self) -> Routing:
        *_, routing = self._routing_steps()
        assert routing is not None
        return routing

    def _routing_steps(self) -> Iterator[Routing | None]:
        """The routing of the current config, built in steps: None after every
        ROUTES_PER_STEP routes, then the routing. Its splitters become this plane's only at
        the end, their shares read again from the flags (a change during the steps went to
        the splitters in use)."""
        self._update_shadows()
        entries: list[Entry[Target]] = []
        splitters: dict[str, Splitter] = {}
        experiments: dict[str, ExperimentRoute] = {}
        # One (frozen) Destination per upstream for the routes without an experiment: a
        # config of 24,000 routes rebuilt in 40 ms on the loop instead of 190.
        direct: dict[str, Destination] = {}
        for index, route in enumerate(self.config.routes, 1):
            target: Target
            if route.experiment is not None:
                if route.experiment not in experiments:
                    experiment = self.config.experiments[route.experiment]
                    splitters[route.experiment] = splitter = Splitter(
                        experiment, self.flags.get(experiment.name).basis_points, self._rng
                    )
                    experiments[route.experiment] = self._experiment(experiment, splitter)
                shared = experiments[route.experiment]  # one splitter per experiment
                target = replace(shared, replayable=route.replayable)
            else:
                assert route.upstream is not None
                if route.upstream not in direct:
                    direct[route.upstream] = self._destination(route.upstream, "", "")
                target = direct[route.upstream]
            entries.append(entry(route, target))
            if index % ROUTES_PER_STEP == 0:
                yield None
        for name, splitter in splitters.items():
            splitter.threshold = self.flags.get(name).basis_points
        self._splitters = splitters
        yield Routing(Router.of(entries), self.config.proxy, self._budget)

    def _experiment(self, experiment: ExperimentConfig, splitter: Splitter) -> ExperimentRoute:
        flag = self.flags.get(experiment.name)
        if experiment.name not in self._phases:
            self._phases[experiment.name] = PhaseRef(flag.phase)
            self.measurements.phase_started(
                experiment.name, Phase(flag.phase, flag.basis_points, flag.updated_at)
            )
        return ExperimentRoute(
            shadow=self.shadows.get(experiment.name),
            fallback=experiment.fallback,
            fallback_on_5xx=experiment.fallback_on_5xx,
            replayable=False,
            splitter=splitter,
            control=self._destination(
                experiment.control.upstream,
                experiment.name,
                experiment.control.name,
                experiment.metrics,
            ),
            treatment=self._destination(
                experiment.treatment.upstream,
                experiment.name,
                experiment.treatment.name,
                experiment.metrics,
            ),
        )

    def _destination(
        self, upstream: str, experiment: str, arm: str, metrics: tuple[MetricConfig, ...] = ()
    ) -> Destination:
        config = self.config.upstreams[upstream]
        host = config.host if config.port == 80 else f"{config.host}:{config.port}"
        stats = self.metrics.traffic(experiment, arm, upstream)
        stats.recorder = None
        extractor = None
        if experiment and self.config.proxy.measurements:
            plan = self.config.experiments[experiment].rollout
            stats.recorder = ArmRecorder(
                self.measurements,
                experiment,
                arm,
                self._phases[experiment],
                slow_over=plan.slo.latency_limit if plan is not None else None,
            )
            if any(metric.from_answer for metric in metrics):
                extractor = MetricExtractor(metrics)
        return Destination(
            pool=self._pools[upstream],
            breaker=self.breakers[upstream],
            stats=stats,
            extractor=extractor,
            phase=self._phases[experiment] if experiment else None,
            experiment=experiment,
            arm=arm,
            host_header=host.encode("idna"),
        )

    def _on_flag(self, flag: Flag) -> None:
        splitter = self._splitters.get(flag.name)
        if splitter is not None:
            splitter.threshold = flag.basis_points
        phase = self._phases.get(flag.name)
        if phase is not None and phase.id != flag.phase:  # a new percentage: a new phase
            phase.move(flag.phase)
            self.measurements.phase_started(
                flag.name, Phase(flag.phase, flag.basis_points, flag.updated_at)
            )

    async def _close_pools(self) -> None:
        for shadow in [*self.shadows.values(), *self._retired_shadows]:
            await shadow.aclose()
        for pool in [*self._pools.values(), *self._retired]:
            await pool.close()

    def _gauges(self) -> Iterator[Metric]:
        yield gauge(
            metrics_catalogue.EXPERIMENT_PERCENTAGE,
            (([name], splitter.threshold / 100) for name, splitter in self._splitters.items()),
        )
        yield gauge(
            metrics_catalogue.BREAKER_STATE,
            (([name], float(breaker.state)) for name, breaker in self.breakers.items()),
        )
        yield gauge(
            metrics_catalogue.UPSTREAM_CONNECTIONS,
            [
                ([name, state], value)
                for name, pool in self._pools.items()
                for state, value in (
                    ("open", pool.open_connections),
                    ("idle", pool.idle_connections),
                    ("waiting", pool.waiting),
                )
            ],
        )
        for shadow in self.shadows.values():
            yield from shadow.collect()
        connects = metrics_catalogue.UPSTREAM_CONNECTS.new()
        retries = metrics_catalogue.UPSTREAM_STALE_RETRIES.new()
        for name, pool in self._pools.items():
            connects.add_metric([name], pool.connects)
            retries.add_metric([name], pool.stale_retries)
        yield connects
        yield retries
        refused = metrics_catalogue.RETRY_BUDGET_EXHAUSTED.new()
        refused.add_metric([], self._budget.exhausted)
        yield refused
        flush_failures = metrics_catalogue.MEASUREMENT_FLUSH_FAILURES.new()
        flush_failures.add_metric([], self.measurements.flush_failures)
        yield flush_failures
        if self.listener is not None:
            yield gauge(
                metrics_catalogue.CLIENT_CONNECTIONS,
                [([], self.listener.connections)],
            )
            refusals = metrics_catalogue.CLIENT_REFUSALS.new()
            for reason, count in self.listener.limits.refused.items():
                refusals.add_metric([reason], count)
            refusals.add_metric(["malformed"], self.listener.malformed)
            yield refusals
