"""An open-loop load test at a fixed rate, for a traffic level (`abgate load-test`,
scripts/load-test.sh) and for a rollout stage that asks for one.

Requests are sent on a fixed schedule (request i at start + i / rate) whatever the answers
do, and each latency is measured from its *scheduled* send time: a stall shows up as the
latency users would see, not as fewer requests (no coordinated omission, as in wrk2). Each
request carries a distinct sticky key from a pool of `users`, so the split works as in
production. Loopback or a URL you own only: this is a load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector

from abgate.config.fields import shown
from abgate.control.flags_cli import DEFAULT_URL, ApiCallFailed, call

DEFAULT_PROXY = "http://127.0.0.1:8080"
FALLBACK_PATH = "/api/agent/credit/decide"  # when the control API names no route


@dataclass(frozen=True, slots=True)
class LoadPlan:
    url: str  # proxy base URL
    path: str = "/api/agent/credit/decide"
    requests_per_second: float = 100.0
    duration: float = 60.0
    users: int = 10_000
    p95_max: float = 0.100  # seconds
    header: str = "X-User-Id"
    timeout: float = 10.0
    max_in_flight: int = 1000


@dataclass
class LoadResult:
    sent: int = 0
    answered: int = 0
    errors: int = 0  # transport errors and timeouts
    statuses: Counter[int] = field(default_factory=Counter)
    arms: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    skipped: int = 0  # not sent: max_in_flight reached (the target is overwhelmed)
    elapsed: float = 0.0
    p95_max: float = 0.1

    def quantile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    @property
    def failed_requests(self) -> int:
        return self.errors + self.skipped + sum(n for s, n in self.statuses.items() if s >= 500)

    @property
    def passed(self) -> bool:
        p95 = self.quantile(0.95)
        return p95 is not None and p95 <= self.p95_max and self.failed_requests == 0

    def as_json(self) -> dict[str, Any]:
        def ms(q: float) -> float | None:
            value = self.quantile(q)
            return None if value is None else round(value * 1000, 3)

        return {
            "passed": self.passed,
            "sent": self.sent,
            "answered": self.answered,
            "errors": self.errors,
            "skipped": self.skipped,
            "failed_requests": self.failed_requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "arms": dict(sorted(self.arms.items())),
            "achieved_rps": round(self.answered / self.elapsed, 1) if self.elapsed else 0.0,
            "latency_ms": {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99), "max": ms(1.0)},
            "p95_max_ms": self.p95_max * 1000,
            "elapsed_seconds": round(self.elapsed, 3),
        }


async def run_load(plan: LoadPlan) -> LoadResult:
    result = LoadResult(p95_max=plan.p95_max)
    total = max(1, int(plan.requests_per_second * plan.duration))
    interval = 1.0 / plan.requests_per_second
    url = plan.url.rstrip("/") + plan.path
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task[None]] = set()
    timeout = ClientTimeout(total=plan.timeout)
    connector = TCPConnector(limit=plan.max_in_flight)
    async with ClientSession(timeout=timeout, connector=connector) as session:

        async def one(index: int, scheduled: float) -> None:
            headers = {plan.header: f"load-{index % plan.users}"}
            try:
                async with session.post(url, data=b'{"amount": 1}', headers=headers) as response:
                    await response.read()
                    result.statuses[response.status] += 1
                    result.arms[response.headers.get("X-ABGate-Arm", "")] += 1
                    result.answered += 1
            except (TimeoutError, OSError):
                result.errors += 1
                return
            result.latencies.append(loop.time() - scheduled)

        start = loop.time()
        for index in range(total):
            scheduled = start + index * interval
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= plan.max_in_flight:
                result.skipped += 1
                continue
            task = asyncio.create_task(one(index, scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            result.sent += 1
        if in_flight:
            await asyncio.wait(in_flight)
        result.elapsed = loop.time() - start
    return result


def render(result: LoadResult, plan: LoadPlan, percentage: float | None) -> str:
    data = result.as_json()
    latency = data["latency_ms"]
    share = f" at {percentage:g}%" if percentage is not None else ""
    verdict = "PASSED" if result.passed else "FAILED"
    return (
        f"load test{share}: {verdict}: {data['answered']:,} answers of {data['sent']:,} sent "
        f"at {plan.requests_per_second:g}/s for {plan.duration:g}s "
        f"(achieved {data['achieved_rps']:g}/s); latency p50 {latency['p50']} ms, "
        f"p95 {latency['p95']} ms (max {plan.p95_max * 1000:g}), p99 {latency['p99']} ms; "
        f"failed {data['failed_requests']}; arms {data['arms']}"
    )


def traffic_command(commands: Any, name: str, summary: str, description: str | None) -> Any:
    """A command that sends traffic through a stack: the proxy to send to, the control API
    to read and steer (ABGATE_PROXY_URL, ABGATE_CONTROL_URL, ABGATE_CONTROL_TOKEN)."""
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--proxy", default=os.environ.get("ABGATE_PROXY_URL", DEFAULT_PROXY))
    parser.add_argument("--control", default=os.environ.get("ABGATE_CONTROL_URL", DEFAULT_URL))
    parser.add_argument("--token", default=os.environ.get("ABGATE_CONTROL_TOKEN"))
    return parser


def add_load_test_parser(commands: Any) -> None:
    parser = traffic_command(
        commands, "load-test", "an open-loop load test at a fixed rate and traffic level", __doc__
    )
    parser.add_argument(
        "--experiment",
        default=None,
        help="default: the current one (its rollout under way, else control.default_experiment)",
    )
    parser.add_argument(
        "--target-percentage",
        type=float,
        default=None,
        help="set the treatment share first (restored after, unless --keep)",
    )
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--duration", default="60s", help="e.g. 300s, 5m (default 60s)")
    parser.add_argument("--requests-per-second", type=float, default=100.0)
    parser.add_argument(
        "--path", default=None, help=f"default: the experiment's first route ({FALLBACK_PATH})"
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--p95-max", default="100ms")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def parse_duration(text: str, what: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if match is None:
        raise ApiCallFailed(f"{what}: expected a duration such as 300s or 100ms, got {shown(text)}")
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return float(match.group(1)) * unit


def _target(api: argparse.Namespace, args: argparse.Namespace) -> tuple[str, str]:
    """The experiment (named, else the current one) and the path to load: --path, else
    the experiment's first prefix route. Without --target-percentage an unreachable control
    API is no error: the load goes to --path or the demo's path."""
    try:
        experiment = call(api, "GET", f"/api/experiments/{args.experiment or 'current'}")
    except ApiCallFailed:
        if args.target_percentage is not None:
            raise
        return args.experiment or "", args.path or FALLBACK_PATH
    prefixes = [r["prefix"] for r in experiment.get("routes", []) if r.get("prefix")]
    return experiment["name"], args.path or (prefixes[0] if prefixes else FALLBACK_PATH)


def run_load_test(args: argparse.Namespace) -> int:
    """Exit 0 passed, 2 failed (p95 over the limit or failed requests), 1 could not run."""
    try:
        if args.requests_per_second <= 0 or args.users < 1:
            raise ApiCallFailed("--requests-per-second and --users must be positive")
        api = argparse.Namespace(url=args.control, token=args.token)
        name, path = _target(api, args)
        plan = LoadPlan(
            args.proxy,
            path,
            args.requests_per_second,
            parse_duration(args.duration, "--duration"),
            args.users,
            parse_duration(args.p95_max, "--p95-max"),
        )
        restore = None
        if args.target_percentage is not None:
            restore = call(api, "GET", f"/api/flags/{name}")["percentage"]
            call(
                api,
                "POST",
                f"/api/flags/{name}",
                {"percentage": args.target_percentage, "reason": "load test"},
            )
        try:
            result = asyncio.run(run_load(plan))
        finally:
            if restore is not None and not args.keep:
                call(
                    api,
                    "POST",
                    f"/api/flags/{name}",
                    {"percentage": restore, "reason": "load test done: restored"},
                )
    except ApiCallFailed as exc:
        print(f"abgate load-test: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"target_percentage": args.target_percentage, **result.as_json()}))
    else:
        print(render(result, plan, args.target_percentage))
    return 0 if result.passed else 2
