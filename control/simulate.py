"""`abgate simulate`: users who ask for decisions and report how they turned out, to rehearse
a rollout plan before real users meet it (and to run the demo's).

Each simulated user has a sticky id (sent as the experiment's sticky header, X-User-Id by
default) and an activity of their own (a few heavy users, many light ones, Zipf-like), and
arrives at random (Poisson) at `--rate` requests a second in all. For every answer the user
reports business outcomes through `POST /api/outcomes`, in batches, with the decision's arm
(`X-ABGate-Arm`), phase (`X-ABGate-Phase`) and user, as the README asks of real reporters:
`accuracy` (0/1) and `satisfaction` (1 to 5) when the experiment declares them. How good the
answer was depends on who served it (the control arm on a fallback), from the scenario:

    better   the treatment more accurate and more satisfying than the control
    worse    the treatment less accurate and less satisfying
    same     no difference (an A/A rehearsal: a rollout should not roll back)

or set by hand (`--accuracy 0.70,0.88` for control, treatment). Users differ from each other
too (each has their own accuracy propensity), which is why outcomes carry the user.

Runs for `--duration`, until the experiment's rollout ends (`--until-rollout-ends`), or until
interrupted; prints a line every 10 s and a summary. Loopback or a stack you own only: this
is a load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import sys
from bisect import bisect
from collections import Counter
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector

from abgate.config.errors import AbgateError
from abgate.control.load_test import parse_duration, traffic_command

FINISHED = ("completed", "rolled_back", "aborted")
REPORT_EVERY = 10.0  # seconds between progress lines
BATCH = 500  # outcomes per POST at most
FLUSH_EVERY = 0.5  # seconds between outcome batches


@dataclass(frozen=True, slots=True)
class Quality:
    """How an arm's answers turn out: accuracy (a rate) and satisfaction (mean on 1-5)."""

    accuracy: float
    satisfaction: float


SCENARIOS: dict[str, tuple[Quality, Quality]] = {  # (control, treatment)
    "better": (Quality(0.70, 3.6), Quality(0.88, 4.5)),
    "worse": (Quality(0.70, 3.6), Quality(0.52, 3.0)),
    "same": (Quality(0.70, 3.6), Quality(0.70, 3.6)),
}


@dataclass(frozen=True, slots=True)
class SimulationPlan:
    proxy: str
    control: str
    experiment: str
    path: str
    header: str = "X-User-Id"
    rate: float = 100.0
    users: int = 2000
    duration: float | None = None  # None: until stopped (or the rollout ends)
    until_rollout_ends: bool = False
    qualities: tuple[Quality, Quality] = SCENARIOS["better"]
    metrics: tuple[str, ...] = ("accuracy", "satisfaction")
    outcome_share: float = 1.0  # of answers whose outcomes are reported
    seed: int = 1
    max_in_flight: int = 200
    token: str | None = None


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    failed: int = 0
    fallbacks: int = 0
    skipped: int = 0  # not sent: max_in_flight reached
    arms: Counter[str] = field(default_factory=Counter)
    outcomes: int = 0
    refused_outcomes: int = 0
    rollout: str = ""

    def line(self, elapsed: float) -> str:
        arms = ", ".join(f"{arm} {n:,}" for arm, n in sorted(self.arms.items()))
        rollout = f"; rollout {self.rollout}" if self.rollout else ""
        return (
            f"simulate: {elapsed:5.0f}s  {self.answered:,} answers ({arms or 'none'}), "
            f"{self.fallbacks:,} fallbacks, {self.failed:,} failed, "
            f"{self.outcomes:,} outcomes reported{rollout}"
        )


class Population:
    """Users with Zipf-like activity and their own accuracy propensity."""

    def __init__(self, users: int, rng: random.Random, prefix: str) -> None:
        weights = [1 / (i + 1) ** 0.7 for i in range(users)]
        self.cumulative = list(accumulate(weights))
        self.ids = [f"{prefix}-{i}" for i in range(users)]
        self.propensity = [rng.gauss(0.0, 0.05) for _ in range(users)]
        self.rng = rng

    def pick(self) -> int:
        return bisect(self.cumulative, self.rng.random() * self.cumulative[-1])


class Simulation:
    def __init__(self, plan: SimulationPlan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.population = Population(plan.users, self.rng, f"sim{plan.seed}")
        self.tally = Tally()
        self.pending: list[dict[str, Any]] = []
        self.stop = asyncio.Event()
        self.arms: tuple[str, str] = ("", "")  # control, treatment

    def _headers(self) -> dict[str, str]:
        headers = {"X-ABGate-Actor": "abgate-simulate"}
        if self.plan.token:
            headers["Authorization"] = f"Bearer {self.plan.token}"
        return headers

    def outcome(self, user: int, arm: str, served_control: bool, phase: str) -> None:
        """The outcomes of one answer, queued for the next batch."""
        if self.rng.random() >= self.plan.outcome_share:
            return
        quality = self.plan.qualities[0 if served_control else 1]
        chance = min(1.0, max(0.0, quality.accuracy + self.population.propensity[user]))
        values = {
            "accuracy": int(self.rng.random() < chance),
            "satisfaction": min(5, max(1, round(self.rng.gauss(quality.satisfaction, 0.8)))),
        }
        for metric in self.plan.metrics:
            item: dict[str, Any] = {
                "experiment": self.plan.experiment,
                "arm": arm,
                "metric": metric,
                "value": values[metric],
                "user": self.population.ids[user],
            }
            if phase.isdigit():
                item["phase"] = int(phase)
            self.pending.append(item)

    async def decide(self, session: ClientSession, user: int) -> None:
        plan = self.plan
        headers = {plan.header: self.population.ids[user]}
        try:
            async with session.post(
                plan.proxy + plan.path, data=b'{"question": "next step?"}', headers=headers
            ) as response:
                await response.read()
                arm = response.headers.get("X-ABGate-Arm", "")
                phase = response.headers.get("X-ABGate-Phase", "")
                fallback = "X-ABGate-Fallback" in response.headers
                ok = response.status < 500
        except (ClientError, TimeoutError, OSError):
            self.tally.failed += 1
            return
        self.tally.answered += 1
        if not ok:
            self.tally.failed += 1
            return
        self.tally.arms[arm] += 1
        self.tally.fallbacks += fallback
        if arm in self.arms:
            self.outcome(user, arm, arm == self.arms[0] or fallback, phase)

    async def report(self, session: ClientSession) -> None:
        """Post queued outcomes in batches until stopped, then the rest."""
        while True:
            stopping = self.stop.is_set()
            while self.pending:
                batch, self.pending = self.pending[:BATCH], self.pending[BATCH:]
                await self._post(session, batch)
            if stopping:
                return
            await stopped_within(self.stop, FLUSH_EVERY)

    async def _post(self, session: ClientSession, batch: list[dict[str, Any]]) -> None:
        try:
            async with session.post(
                self.plan.control + "/api/outcomes", json=batch, headers=self._headers()
            ) as response:
                body = await response.json(content_type=None)
                if response.status == 200:
                    self.tally.outcomes += len(batch)
                    return
        except (ClientError, TimeoutError, OSError, ValueError) as exc:
            body = {"error": f"{type(exc).__name__}: {exc}"}
        if not self.tally.refused_outcomes:  # once: the reason is the same for the rest
            print(f"simulate: outcomes refused: {body.get('error', body)}", file=sys.stderr)
        self.tally.refused_outcomes += len(batch)

    async def watch_rollout(self, session: ClientSession) -> None:
        """The rollout these users take part in. One already over when the simulation began
        is an earlier run's: not reported (a shadow run said "rollout completed"), nor the
        end --until-rollout-ends waits for."""
        url = f"{self.plan.control}/api/rollouts/{self.plan.experiment}"
        earlier: float | None = None  # the started_at of a rollout over before we began
        first = True
        while not self.stop.is_set():
            try:
                async with session.get(url) as response:
                    view = await response.json() if response.status == 200 else None
                over = view is not None and view["state"] in FINISHED
                if first and view is not None and over:
                    earlier = view["started_at"]
                first = False
                if view is not None and not (over and view["started_at"] == earlier):
                    self.tally.rollout = view["state"]
            except (ClientError, TimeoutError, OSError, ValueError):
                pass  # the control API restarting: ask again
            if self.plan.until_rollout_ends and self.tally.rollout in FINISHED:
                self.stop.set()
                return
            await stopped_within(self.stop, 1.0)

    async def run(self) -> Tally:
        plan = self.plan
        loop = asyncio.get_running_loop()
        connector = TCPConnector(limit=plan.max_in_flight)
        timeout = ClientTimeout(total=30)
        in_flight: set[asyncio.Task[None]] = set()
        async with ClientSession(connector=connector, timeout=timeout) as session:
            self.arms = await self._arms(session)
            helpers = [
                asyncio.create_task(self.report(session)),
                asyncio.create_task(self.watch_rollout(session)),
            ]
            start = next_report = loop.time()
            next_send = start
            try:
                while not self.stop.is_set():
                    now = loop.time()
                    if plan.duration is not None and now - start >= plan.duration:
                        break
                    if now >= next_report:
                        print(self.tally.line(now - start), flush=True)
                        next_report += REPORT_EVERY
                    next_send += self.rng.expovariate(plan.rate)  # Poisson arrivals
                    delay = next_send - loop.time()
                    if delay > 0 and await stopped_within(self.stop, delay):
                        break
                    if len(in_flight) >= plan.max_in_flight:
                        self.tally.skipped += 1
                        continue
                    task = asyncio.create_task(self.decide(session, self.population.pick()))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    self.tally.sent += 1
            finally:
                if in_flight:
                    await asyncio.wait(in_flight)
                self.stop.set()
                await asyncio.gather(*helpers)
            print(self.tally.line(loop.time() - start), flush=True)
        return self.tally

    async def _arms(self, session: ClientSession) -> tuple[str, str]:
        url = f"{self.plan.control}/api/experiments/{self.plan.experiment}"
        async with session.get(url) as response:
            data = await response.json()
            if response.status != 200:
                raise SimulationError(f"GET {url}: {response.status} {data.get('error')}")
        return data["arms"]["control"], data["arms"]["treatment"]


class SimulationError(AbgateError):
    pass


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds`; whether `stop` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def add_simulate_parser(commands: Any) -> None:
    parser = traffic_command(
        commands,
        "simulate",
        "simulated users: decisions through the proxy, outcomes to the control API",
        __doc__,
    )
    parser.add_argument("--experiment", default="current", help="default: the current one")
    parser.add_argument("--path", default=None, help="default: the experiment's first route")
    parser.add_argument("--header", default="X-User-Id", help="the sticky key's header")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--duration", default=None, help="e.g. 90s, 5m (default: until stopped)")
    parser.add_argument("--until-rollout-ends", action="store_true")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="better")
    parser.add_argument("--accuracy", default=None, help="control,treatment rates: 0.7,0.88")
    parser.add_argument("--satisfaction", default=None, help="control,treatment means: 3.6,4.5")
    parser.add_argument("--outcome-share", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)


def _pair(text: str | None, default: tuple[float, float], what: str) -> tuple[float, float]:
    if text is None:
        return default
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise SimulationError(f"{what}: expected two numbers, control,treatment") from None
    if not all(math.isfinite(v) for v in (low, high)):
        raise SimulationError(f"{what}: expected finite numbers")
    return low, high


async def _resolve(plan: SimulationPlan) -> SimulationPlan:
    """The experiment's real name, its path (first prefix route) and declared outcomes."""
    async with ClientSession(timeout=ClientTimeout(total=30)) as session:
        url = f"{plan.control}/api/experiments/{plan.experiment}"
        try:
            async with session.get(url) as response:
                data = await response.json(content_type=None)
                if response.status != 200:
                    raise SimulationError(f"GET {url}: {response.status} {data.get('error')}")
        except (ClientError, OSError) as exc:
            raise SimulationError(f"cannot reach the control API at {plan.control}: {exc}") from exc
    declared = {m["name"] for m in data.get("metrics", []) if m.get("outcome")}
    metrics = tuple(m for m in plan.metrics if m in declared)
    path = plan.path
    if not path:
        prefixes = [r["prefix"] for r in data.get("routes", []) if r.get("prefix")]
        if not prefixes:
            raise SimulationError(f"--path: {data['name']} has no prefix route to send to")
        path = prefixes[0]
    return replace(plan, experiment=data["name"], path=path, metrics=metrics)


def run_simulate(args: argparse.Namespace) -> int:
    try:
        if args.rate <= 0 or args.users < 1 or not 0 < args.outcome_share <= 1:
            raise SimulationError("--rate, --users and --outcome-share (0..1] must be positive")
        control_q, treatment_q = SCENARIOS[args.scenario]
        accuracy = _pair(args.accuracy, (control_q.accuracy, treatment_q.accuracy), "--accuracy")
        satisfaction = _pair(
            args.satisfaction,
            (control_q.satisfaction, treatment_q.satisfaction),
            "--satisfaction",
        )
        plan = SimulationPlan(
            proxy=args.proxy.rstrip("/"),
            control=args.control.rstrip("/"),
            experiment=args.experiment,
            path=args.path or "",
            header=args.header,
            rate=args.rate,
            users=args.users,
            duration=parse_duration(args.duration, "--duration") if args.duration else None,
            until_rollout_ends=args.until_rollout_ends,
            qualities=(
                Quality(accuracy[0], satisfaction[0]),
                Quality(accuracy[1], satisfaction[1]),
            ),
            outcome_share=args.outcome_share,
            seed=args.seed,
            token=args.token,
        )
        return asyncio.run(_main(plan))
    except SimulationError as exc:
        print(f"abgate simulate: {exc}", file=sys.stderr)
        return 1


async def _main(plan: SimulationPlan) -> int:
    plan = await _resolve(plan)
    quality = ", ".join(
        f"{arm} accuracy {q.accuracy:.0%} satisfaction {q.satisfaction:g}"
        for arm, q in zip(("control", "treatment"), plan.qualities, strict=True)
    )
    print(
        f"simulate: {plan.users:,} users at {plan.rate:g}/s on {plan.proxy}{plan.path} "
        f"({plan.experiment}); outcomes {', '.join(plan.metrics) or 'none declared'} to "
        f"{plan.control}; {quality}",
        flush=True,
    )
    simulation = Simulation(plan)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, simulation.stop.set)
    tally = await simulation.run()
    return 0 if tally.answered and not tally.refused_outcomes else 1
