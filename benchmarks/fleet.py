"""A fleet of sidecars on one Redis (issue 30): what each sidecar costs Redis and itself, and
how fast a flag change and an emergency rollback reach all of them, at growing fleet sizes.

On this machine: one redis-server, `abgate control` (control API, flag writer, statistics,
controller), the nginx upstream (or the demo agent), and N `abgate proxy` processes (one
worker each, their own port: N sidecars), grown in steps (default 1, 10, 25, 50). At each
size, in turn:

  idle       W seconds with no traffic: heartbeats (and the control plane) only
  traffic    W seconds at R requests a second per sidecar (each from a new user, so each
             flush carries sums for many clusters of users and new distinct-user bits),
             sent by a load process of its own; measurement flushes every second
  propagation  C flag changes (0% <-> 100%) while the traffic goes on; per change and per
             sidecar, the time from the write (the flag's updated_at) to the sidecar's
             report that it applied it (its registry heartbeat, written right after it
             applies a change; polled every 5 ms). Same machine, same clock.
  rollback   B emergency rollbacks (POST /api/rollback), which answer once every sidecar
             reports the new version: the time the API measured, confirmed by all

Redis commands and CPU come from Redis itself (INFO commandstats and used_cpu_*), sidecar
CPU from /proc/PID/stat of every sidecar, memory from VmRSS. Growth is fitted as a + b*N by
least squares over the sizes measured, and extrapolated to 1,000 sidecars.

    python -m benchmarks.fleet [--sizes 1,10,25,50] [--window 15] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio
from aiohttp import ClientSession, ClientTimeout, TCPConnector

from benchmarks.common import (
    RESULTS,
    ROOT,
    process,
    redis_server_command,
    verdict,
    wait_http,
    write_section,
)
from benchmarks.run import bench_config, cpu_seconds, require_tools, rss_mib, start_upstream

PATH = "/api/agent/credit/decide"
HEARTBEAT = "1s"
# Redis commands by what sends them (INFO commandstats names).
HEARTBEAT_COMMANDS = {"hset", "expire", "zadd"}
# A flush is one script a batch (EVALSHA: SET of the batch id, then per group of sums two
# HGETs and three HINCRBY/HINCRBYFLOATs, all counted by Redis), then SADD/SETBIT for new users.
FLUSH_COMMANDS = {"evalsha", "set", "hget", "hincrby", "hincrbyfloat", "setbit", "sadd", "hsetnx"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sidecar:
    port: int
    proc: subprocess.Popen[bytes]


@dataclass
class Window:
    """What one measured window cost: Redis commands by source, Redis CPU, sidecar CPU."""

    seconds: float
    commands: Counter[str]
    redis_cpu: float  # seconds of Redis CPU (user + system)
    sidecar_cpu: list[float]  # seconds of CPU per sidecar

    def per_second(self, names: set[str] | None = None) -> float:
        total = sum(v for k, v in self.commands.items() if names is None or k in names)
        return total / self.seconds

    @property
    def sidecar_cpu_percent(self) -> float:
        return statistics.mean(self.sidecar_cpu) / self.seconds * 100

    @property
    def redis_cpu_percent(self) -> float:
        return self.redis_cpu / self.seconds * 100


@dataclass
class Size:
    sidecars: int
    idle: Window
    traffic: Window
    requests: Counter[str]
    propagation: list[list[float]]  # per change: ms to each sidecar
    rollback_ms: list[float]
    rollback_confirmed: list[int]
    rss_mib: float
    load: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def to_each(self) -> list[float]:
        return [ms for change in self.propagation for ms in change]

    @property
    def to_all(self) -> list[float]:
        return [max(change) for change in self.propagation]


COSTS_HEAD = (
    "| sidecars | Redis cmd/s, idle | Redis cmd/s, traffic | Redis CPU %, idle "
    "| Redis CPU %, traffic | sidecar CPU %, idle | sidecar CPU %, traffic | sidecar MiB |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|"
)
SPEEDS_HEAD = (
    "| sidecars | to each p50 | to each p99 | to all p50 | to all p99 | rollback p50 "
    "| rollback max | confirmed | client errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def redis_counters(client: redis.Redis) -> tuple[Counter[str], float]:
    stats = client.info("commandstats")
    commands: Counter[str] = Counter()
    for name, value in stats.items():
        commands[name.removeprefix("cmdstat_")] = int(value["calls"])
    cpu = client.info("cpu")
    return commands, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def publish_usec(client: redis.Redis) -> tuple[int, int]:
    """(calls, microseconds) of PUBLISH so far: the fan-out to every subscribed sidecar
    (run inside the flag write's script, counted by Redis all the same)."""
    stats = client.info("commandstats").get("cmdstat_publish", {"calls": 0, "usec": 0})
    return int(stats["calls"]), int(stats["usec"])


def measure(client: redis.Redis, sidecars: list[Sidecar], seconds: float) -> Window:
    commands, redis_cpu = redis_counters(client)
    cpu = [sum(cpu_seconds(s.proc.pid)) for s in sidecars]
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    after, redis_after = redis_counters(client)
    cpu_after = [sum(cpu_seconds(s.proc.pid)) for s in sidecars]
    return Window(
        elapsed,
        after - commands,
        redis_after - redis_cpu,
        [b - a for a, b in zip(cpu, cpu_after, strict=True)],
    )


# -- the load process ----------------------------------------------------------------------


def load_main(ports: list[int], rate: float, seconds: float, stop: Any, out: Any) -> None:
    """Paced requests to every port at `rate` a second each, each from a new user, until
    `stop` is set (at most `seconds`); the statuses counted go back through `out`."""
    import uvloop

    out.put(uvloop.run(_load(ports, rate, seconds, stop)))


async def _load(ports: list[int], rate: float, seconds: float, stop: Any) -> dict[str, int]:
    statuses: Counter[str] = Counter()
    users = random.Random(30)
    total = rate * len(ports)
    connector = TCPConnector(limit=0)
    async with ClientSession(connector=connector, timeout=ClientTimeout(total=30)) as session:
        tasks: set[asyncio.Task[None]] = set()

        async def one(port: int) -> None:
            try:
                headers = {"X-User-Id": f"user-{users.randrange(10**9)}"}
                async with session.get(f"http://127.0.0.1:{port}{PATH}", headers=headers) as r:
                    await r.read()
                    statuses[str(r.status)] += 1
            except Exception as exc:  # counted, never fatal: the benchmark reports errors
                statuses[type(exc).__name__] += 1

        loop = asyncio.get_running_loop()
        started = next_at = loop.time()
        sent = 0
        while loop.time() - started < seconds and not (sent % 100 == 0 and stop.is_set()):
            task = asyncio.create_task(one(ports[sent % len(ports)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            next_at += 1 / total
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        await asyncio.gather(*tasks)
    return dict(statuses)


# -- propagation and rollback --------------------------------------------------------------


async def instance_ids(session: ClientSession, control: str, count: int) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        async with session.get(f"{control}/api/instances") as response:
            ids = [i["id"] for i in (await response.json())["instances"]]
        if len(ids) >= count or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.2)


async def applied_times(
    client: redis.asyncio.Redis, ids: list[str], version: int, written_at: float
) -> list[float]:
    """ms from `written_at` to each sidecar's report of `version` (its heartbeat_at)."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 30
    while len(seen) < len(ids) and time.monotonic() < deadline:
        waiting = [i for i in ids if i not in seen]
        pipe = client.pipeline(transaction=False)
        for instance in waiting:
            pipe.hmget(f"{{abgate}}:instance:{instance}", ["applied", "heartbeat_at"])
        for instance, (applied, beat) in zip(waiting, await pipe.execute(), strict=True):
            if applied and orjson.loads(applied).get("bench", 0) >= version:
                seen[instance] = (float(beat) - written_at) * 1000
        await asyncio.sleep(0.005)
    if len(seen) < len(ids):
        raise RuntimeError(f"{len(ids) - len(seen)} sidecar(s) never applied v{version}")
    return list(seen.values())


async def set_everywhere(redis_url: str, control: str, ids: list[str], percentage: int) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with ClientSession() as session:
            async with session.post(
                f"{control}/api/flags/bench", json={"percentage": percentage}
            ) as response:
                flag = await response.json()
                assert response.status == 200, flag
            await applied_times(client, ids, flag["version"], flag["updated_at"])
    finally:
        await client.aclose()


async def propagation(
    redis_url: str, control: str, ids: list[str], changes: int
) -> list[list[float]]:
    samples = []
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with ClientSession() as session:
            for index in range(changes):
                percentage = 100 if index % 2 == 0 else 0
                async with session.post(
                    f"{control}/api/flags/bench", json={"percentage": percentage}
                ) as response:
                    flag = await response.json()
                    assert response.status == 200, flag
                samples.append(
                    await applied_times(client, ids, flag["version"], flag["updated_at"])
                )
                await asyncio.sleep(0.2)
    finally:
        await client.aclose()
    return samples


async def rollbacks(
    redis_url: str, control: str, ids: list[str], count: int
) -> tuple[list[float], list[int]]:
    elapsed, confirmed = [], []
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with ClientSession() as session:
            for _ in range(count):
                async with session.post(
                    f"{control}/api/flags/bench", json={"percentage": 100}
                ) as response:
                    flag = await response.json()
                await applied_times(client, ids, flag["version"], flag["updated_at"])
                async with session.post(
                    f"{control}/api/rollback", json={"experiments": ["bench"], "timeout": 30}
                ) as response:
                    body = await response.json()
                    assert response.status == 200, body
                elapsed.append(float(body["elapsed_ms"]))
                confirmed.append(sum(1 for i in body["instances"] if i["converged"]))
                await asyncio.sleep(0.2)
    finally:
        await client.aclose()
    return elapsed, confirmed


# -- the run -------------------------------------------------------------------------------


def start_sidecars(
    stack: contextlib.ExitStack,
    workdir: Path,
    redis_url: str,
    upstream: dict[str, int],
    count: int,
    into: list[Sidecar],
) -> None:
    """Start sidecars until there are `count`, a few at a time (start-up is CPU-heavy)."""
    command = [sys.executable, "-m", "abgate.control.cli", "--log-level", "WARNING", "proxy"]
    while len(into) < count:
        batch: list[Sidecar] = []
        for _ in range(min(4, count - len(into) - len(batch))):
            port = free_port()
            config = bench_config(
                workdir / f"proxy-{port}.yaml",
                proxy_port=port,
                control_port=0,
                flags={"redis_url": redis_url, "heartbeat_interval": HEARTBEAT},
                ports=upstream,
            )
            proc = stack.enter_context(process([*command, "--config", str(config)], cwd=ROOT))
            batch.append(Sidecar(port, proc))
        for sidecar in batch:
            wait_http(f"http://127.0.0.1:{sidecar.port}{PATH}", timeout=60)
        into.extend(batch)


def run_size(
    args: argparse.Namespace,
    client: redis.Redis,
    redis_url: str,
    control: str,
    sidecars: list[Sidecar],
) -> Size:
    count = len(sidecars)
    ids = asyncio.run(_ids(control, count))
    assert len(ids) == count, f"{len(ids)} of {count} sidecars registered"
    time.sleep(2)  # start-up settles
    load = os.getloadavg()[0]
    # 50%: both arms hash the user (at 0% or 100% the split has no need to, and the sums
    # are kept for requests, not clusters of users: far fewer keys a flush).
    asyncio.run(set_everywhere(redis_url, control, ids, 50))
    idle = measure(client, sidecars, args.window)
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    stop = context.Event()
    loader = context.Process(
        target=load_main, args=([s.port for s in sidecars], args.rate, 600.0, stop, queue)
    )
    loader.start()
    time.sleep(3)  # the load reaches its rate, flushes carry it
    try:
        traffic = measure(client, sidecars, args.window)
        before = publish_usec(client)
        changes = asyncio.run(propagation(redis_url, control, ids, args.changes))
        after = publish_usec(client)
        elapsed, confirmed = asyncio.run(rollbacks(redis_url, control, ids, args.rollbacks))
    finally:
        stop.set()
    statuses = Counter(queue.get(timeout=120))
    loader.join(60)
    rss = statistics.mean(rss_mib(s.proc.pid) for s in sidecars)
    size = Size(count, idle, traffic, statuses, changes, elapsed, confirmed, rss, load)
    calls = after[0] - before[0]
    size.extra["publish_us"] = (after[1] - before[1]) / calls if calls else 0.0
    print(json.dumps(summary(size)), flush=True)
    return size


async def _ids(control: str, count: int) -> list[str]:
    async with ClientSession() as session:
        return await instance_ids(session, control, count)


def summary(size: Size) -> dict[str, Any]:
    return {
        "sidecars": size.sidecars,
        "idle_commands_per_s": round(size.idle.per_second(), 1),
        "idle_heartbeat_commands_per_s": round(size.idle.per_second(HEARTBEAT_COMMANDS), 1),
        "traffic_commands_per_s": round(size.traffic.per_second(), 1),
        "traffic_flush_commands_per_s": round(size.traffic.per_second(FLUSH_COMMANDS), 1),
        "redis_cpu_idle_pct": round(size.idle.redis_cpu_percent, 2),
        "redis_cpu_traffic_pct": round(size.traffic.redis_cpu_percent, 2),
        "sidecar_cpu_idle_pct": round(size.idle.sidecar_cpu_percent, 3),
        "sidecar_cpu_traffic_pct": round(size.traffic.sidecar_cpu_percent, 3),
        "propagation_each_p50_ms": round(statistics.median(size.to_each), 2),
        "propagation_each_p99_ms": round(percentile(size.to_each, 99), 2),
        "propagation_all_p50_ms": round(statistics.median(size.to_all), 2),
        "propagation_all_p99_ms": round(percentile(size.to_all, 99), 2),
        "rollback_p50_ms": round(statistics.median(size.rollback_ms), 1),
        "rollback_max_ms": round(max(size.rollback_ms), 1),
        "rollback_confirmed_min": min(size.rollback_confirmed),
        "requests": dict(size.requests),
        "rss_mib": round(size.rss_mib, 1),
        "publish_us": round(size.extra.get("publish_us", 0.0), 2),
        "loadavg_before": round(size.load, 2),
    }


def traffic_cpu(size: Size) -> float:
    return size.traffic.redis_cpu_percent


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares a + b*x."""
    if len(points) < 2:
        return points[0][1], 0.0
    xs, ys = zip(*points, strict=True)
    slope, intercept = statistics.linear_regression(xs, ys)
    return intercept, slope


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,10,25,50")
    parser.add_argument("--window", type=float, default=15.0, help="seconds per measured window")
    parser.add_argument("--rate", type=float, default=20.0, help="req/s per sidecar")
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--rollbacks", type=int, default=10)
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a quieter machine")
    parser.add_argument("--max-wait", type=float, default=1800, help="seconds, at most")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if require_tools("redis-server") is None:
        return 1
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    waited = 0
    while os.getloadavg()[0] > args.max_load and waited < args.max_wait:  # not beside others
        print(f"load average {os.getloadavg()[0]:.2f}: waiting for a quieter machine", flush=True)
        time.sleep(30)
        waited += 30
    results: list[Size] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        redis_port = free_port()
        stack.enter_context(process(redis_server_command("redis-server", redis_port)))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        # Ports of our own: other developers' benchmarks use the fixed ones of benchmarks.run.
        ports = {"arm_a": free_port(), "arm_b": free_port(), "nginx": free_port()}
        upstream = start_upstream(stack, workdir, nginx, ports)
        control_port = free_port()
        control_config = bench_config(
            workdir / "control.yaml",
            proxy_port=0,
            control_port=control_port,
            flags={"redis_url": redis_url, "heartbeat_interval": HEARTBEAT},
            ports=ports,
        )
        stack.enter_context(
            process(
                [
                    sys.executable,
                    "-m",
                    "abgate.control.cli",
                    "--log-level",
                    "WARNING",
                    "control",
                    "--config",
                    str(control_config),
                ],
                cwd=ROOT,
            )
        )
        control = f"http://127.0.0.1:{control_port}"
        wait_http(f"{control}/health")
        sidecars: list[Sidecar] = []
        for size in sizes:
            start_sidecars(stack, workdir, redis_url, ports, size, sidecars)
            results.append(run_size(args, client, redis_url, control, sidecars))
        client.close()
    write(args, results, upstream)
    print(f"wrote {RESULTS}")
    return 0


def write(args: argparse.Namespace, results: list[Size], upstream: str) -> None:
    costs, speeds = [], []
    for size in results:
        s = summary(size)
        errors = sum(v for k, v in size.requests.items() if k != "200")
        costs.append(
            f"| {size.sidecars} | {s['idle_commands_per_s']:,.0f} | "
            f"{s['traffic_commands_per_s']:,.0f} | {s['redis_cpu_idle_pct']:.2f} | "
            f"{s['redis_cpu_traffic_pct']:.2f} | {s['sidecar_cpu_idle_pct']:.2f} | "
            f"{s['sidecar_cpu_traffic_pct']:.2f} | {s['rss_mib']:.0f} |"
        )
        speeds.append(
            f"| {size.sidecars} | {s['propagation_each_p50_ms']:.1f} | "
            f"{s['propagation_each_p99_ms']:.1f} | {s['propagation_all_p50_ms']:.1f} | "
            f"{s['propagation_all_p99_ms']:.1f} | {s['rollback_p50_ms']:.0f} | "
            f"{s['rollback_max_ms']:.0f} | {s['rollback_confirmed_min']} of {size.sidecars} | "
            f"{errors} of {sum(size.requests.values()):,} |"
        )
    growth = {}
    for name, value in (
        ("Redis commands/s, idle", lambda z: z.idle.per_second()),
        (f"Redis commands/s, {args.rate:g} req/s a sidecar", lambda z: z.traffic.per_second()),
        ("Redis CPU % of a core, idle", lambda z: z.idle.redis_cpu_percent),
        (f"Redis CPU % of a core, {args.rate:g} req/s a sidecar", traffic_cpu),
        ("PUBLISH (fan-out to every sidecar), us a call", lambda z: z.extra["publish_us"]),
    ):
        growth[name] = fit([(z.sidecars, value(z)) for z in results])
    growth_rows = "\n".join(
        f"| {name} | {a:,.3f} | {b:,.4f} | {a + b * 1000:,.1f} |" for name, (a, b) in growth.items()
    )
    machine = {
        "propagation to all, p99 ms": fit(
            [(z.sidecars, percentile(z.to_all, 99)) for z in results]
        ),
        "rollback confirmed by all, p50 ms": fit(
            [(z.sidecars, statistics.median(z.rollback_ms)) for z in results]
        ),
    }
    machine_rows = "\n".join(
        f"| {name} | {a:,.2f} | {b:,.3f} |" for name, (a, b) in machine.items()
    )
    per_sidecar = "\n".join(
        f"| {name} | {statistics.mean(v):.2f} | {min(v):.2f} - {max(v):.2f} |"
        for name, v in (
            ("CPU % of a core, idle", [z.idle.sidecar_cpu_percent for z in results]),
            (
                f"CPU % of a core, {args.rate:g} req/s",
                [z.traffic.sidecar_cpu_percent for z in results],
            ),
            ("resident memory, MiB", [z.rss_mib for z in results]),
        )
    )
    largest = results[-1]
    flush_per_sidecar = largest.traffic.per_second(FLUSH_COMMANDS) / largest.sidecars
    beat_per_sidecar = largest.idle.per_second(HEARTBEAT_COMMANDS) / largest.sidecars
    marginal_us = (
        (largest.traffic.redis_cpu_percent - largest.idle.redis_cpu_percent)
        / 100
        / max(1.0, largest.traffic.per_second() - largest.idle.per_second())
        * 1e6
    )
    met = all(max(z.to_all) < 1000 and min(z.rollback_confirmed) == z.sidecars for z in results)
    text = f"""## A fleet of sidecars on one Redis (issue 30)

Measured by `python -m benchmarks.fleet` (`benchmarks/fleet.py`) on {time.strftime("%Y-%m-%d")},
on the 2-core development machine: one redis-server, `abgate control`, the upstream
({upstream}), a load process and up to {largest.sidecars} `abgate proxy` processes (one worker
each, heartbeat {HEARTBEAT}), all on the same two cores. Sizes grown in steps; at each:
{args.window:g} s idle, {args.window:g} s at {args.rate:g} req/s per sidecar (every request a
new user), then {args.changes} flag changes and {args.rollbacks} emergency rollbacks under that
traffic. Propagation: from the write (the flag's `updated_at`) to each sidecar's registry
report that it applied it (written right after applying; polled every 5 ms). Redis figures
from Redis itself (INFO commandstats, used_cpu_*), sidecar CPU from /proc. The machine is
shared with other developers' work: 1-minute load average before each size
{" / ".join(f"{z.load:.1f}" for z in results)}.

What each size costs (Redis: commands and CPU of its one core; sidecars: mean CPU of one
core and resident memory per sidecar):

{COSTS_HEAD}
{chr(10).join(costs)}

How fast a change gets everywhere (ms; rollback: the time the API measured until every
sidecar reported the new version, and how many confirmed):

{SPEEDS_HEAD}
{chr(10).join(speeds)}

Targets: every change reaches every sidecar within 1 s and every rollback is confirmed by all
sidecars: {verdict(met)}.

How it grows. Redis's costs, fitted as a + b x N by least squares over the sizes measured
and extrapolated to 1,000 sidecars (they grow with the number of sidecars whatever hosts
the sidecars run on):

| Redis | a | b (per sidecar) | at N = 1,000 |
|---|---:|---:|---:|
{growth_rows}

Each sidecar's own cost does not grow with the fleet (mean over the sizes, and range):

| per sidecar | mean | range |
|---|---:|---:|
{per_sidecar}

Per sidecar, at {largest.sidecars}: heartbeats {beat_per_sidecar:.1f} Redis commands/s (HSET,
EXPIRE, ZADD in one pipeline), measurement flushes {flush_per_sidecar:.1f} commands/s at
{args.rate:g} req/s of new users (one script a flush: HGETs and HINCRBY/HINCRBYFLOAT per
touched cluster of users, arm and metric; SETBIT per new user). Redis's CPU for the
traffic's commands: {marginal_us:.1f} us a command (the difference between the two windows
at {largest.sidecars} sidecars).

Propagation and rollback, fitted the same way; here they measure this machine (all
sidecars on two cores), not Redis, so the slope is not a forecast:

| on this machine | a | b (per sidecar) |
|---|---:|---:|
{machine_rows}

Reading it. With each sidecar on its own host, a change reaches all of them in about the
one-sidecar time plus Redis's fan-out (the PUBLISH row: one write per subscriber). Flush
commands grow with each sidecar's traffic until every cluster of users is touched every
second: 2 arms x 2 metrics (3 with a latency SLO) x 129 clusters x 5 commands (two HGETs
that check the sums stay finite, three increments) = 2,580 a flush, plus one SETBIT per new
user; at 0% or 100% the split does not hash the user and a flush is a few commands an arm.
"""
    write_section("fleet", text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
