"""Flag propagation across sidecars, emergency rollback, and throughput by flag backend.

On this machine: a redis-server on an ephemeral port, `abgate control` (control API, flag
writer), and 4 `abgate proxy` processes on their own ports (4 sidecars), all on one Redis.
The upstream is nginx `return 200` (or the demo agent without nginx).

  propagation  500 changes alternating 0% and 100%; for each, the time from the control API's
               answer until every proxy routes a probe request to the new arm (4 probes loop
               on the proxies concurrently, each request ~0.3 ms)
  rollback     20 emergency rollbacks of all experiments (POST /api/rollback, which answers
               once every live instance reports the new version), end to end at the client
  embedded     the same changes and rollbacks through `abgate run` (its control process
               pushes to its data plane over the local channel)
  throughput   wrk against one proxy with the Redis backend, then `abgate run` with the
               embedded one, same upstream and settings

    python -m benchmarks.propagation [--changes 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import ClientSession

from benchmarks.common import (
    RESULTS,
    ROOT,
    process,
    redis_server_command,
    verdict,
    wait_http,
    write_section,
)
from benchmarks.run import LUA, Result, bench_config, start_upstream, wrk

PROXIES = 4
PROXY_PORTS = [18201 + i for i in range(PROXIES)]
CONTROL_PORT = 18292
EMBEDDED_PORTS = (18280, 18293)


def config(path: Path, *, proxy_port: int, control_port: int, redis_url: str | None) -> Path:
    flags: dict[str, object] = {"heartbeat_interval": "1s"}
    if redis_url:
        flags["redis_url"] = redis_url
    return bench_config(
        path, proxy_port=proxy_port, control_port=control_port, percentage=0, flags=flags
    )


async def arm(session: ClientSession, port: int) -> str:
    async with session.get(
        f"http://127.0.0.1:{port}/api/agent/credit/decide", headers={"X-User-Id": "probe"}
    ) as response:
        await response.read()
        return response.headers["X-ABGate-Arm"]


async def flipped(session: ClientSession, port: int, expected: str) -> float:
    """Probe one proxy until it routes to `expected`; when it did."""
    while await arm(session, port) != expected:
        pass
    return time.perf_counter()


async def propagation(
    changes: int, control: int = CONTROL_PORT, proxies: list[int] = PROXY_PORTS
) -> tuple[list[float], list[float]]:
    """Per change: ms from the control API's answer, and from sending the write, until every
    proxy routes a probe to the new arm."""
    after_answer, after_send = [], []
    async with ClientSession() as session:
        for index in range(changes):
            percentage = 100 if index % 2 == 0 else 0
            expected = "arm_b" if percentage else "arm_a"
            sent = time.perf_counter()
            async with session.post(
                f"http://127.0.0.1:{control}/api/flags/bench", json={"percentage": percentage}
            ) as response:
                assert response.status == 200, await response.text()
                answered = time.perf_counter()

            async with asyncio.timeout(10):
                done = await asyncio.gather(*(flipped(session, port, expected) for port in proxies))
            after_answer.append((max(done) - answered) * 1000)
            after_send.append((max(done) - sent) * 1000)
    return after_answer, after_send


async def rollbacks(
    count: int, control: int = CONTROL_PORT, instances: int = PROXIES
) -> list[float]:
    samples = []
    async with ClientSession() as session:
        for _ in range(count):
            async with session.post(
                f"http://127.0.0.1:{control}/api/flags/bench", json={"percentage": 100}
            ) as response:
                assert response.status == 200
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            async with session.post(
                f"http://127.0.0.1:{control}/api/rollback", json={"timeout": 30}
            ) as response:
                body = await response.json()
                assert response.status == 200, body
                assert body["converged"], body
                assert len(body["instances"]) == instances, body
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def row(what: str, values: list[float], target: str) -> str:
    return (
        f"| {what} | {len(values)} | {statistics.median(values):.2f} | "
        f"{percentile(values, 99):.2f} | {max(values):.2f} | {target} |"
    )


def wrk_row(what: str, result: Result) -> str:
    return f"| {what} | {result.rps:,.0f} | {result.p50_ms:.3f} | {result.p99_ms:.3f} |"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=500)
    parser.add_argument("--rollbacks", type=int, default=20)
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if redis_server is None or shutil.which("wrk") is None:
        print("benchmarks: needs redis-server and wrk (make test-servers)", file=sys.stderr)
        return 1
    abgate = [sys.executable, "-m", "abgate.control.cli", "--log-level", "WARNING"]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        redis_port = 18379
        stack.enter_context(process(redis_server_command(redis_server, redis_port)))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        start_upstream(stack, workdir, nginx if Path(nginx).exists() else None)
        stack.enter_context(
            process(
                [
                    *abgate,
                    "control",
                    "--config",
                    str(
                        config(
                            workdir / "control.yaml",
                            proxy_port=0,
                            control_port=CONTROL_PORT,
                            redis_url=redis_url,
                        )
                    ),
                ],
                cwd=ROOT,
            )
        )
        wait_http(f"http://127.0.0.1:{CONTROL_PORT}/health")
        for index, port in enumerate(PROXY_PORTS):
            stack.enter_context(
                process(
                    [
                        *abgate,
                        "proxy",
                        "--config",
                        str(
                            config(
                                workdir / f"proxy{index}.yaml",
                                proxy_port=port,
                                control_port=0,
                                redis_url=redis_url,
                            )
                        ),
                    ],
                    cwd=ROOT,
                )
            )
            wait_http(f"http://127.0.0.1:{port}/api/agent/credit/decide")
        time.sleep(1.5)  # every proxy has registered its first heartbeat
        changes, _ = asyncio.run(propagation(args.changes))
        rollback = asyncio.run(rollbacks(args.rollbacks))
        script = workdir / "users.lua"
        script.write_text(LUA)
        with_redis = wrk(
            "redis",
            f"http://127.0.0.1:{PROXY_PORTS[0]}",
            connections=32,
            duration=args.duration,
            script=script,
        )
        stack.enter_context(
            process(
                [
                    *abgate,
                    "run",
                    "--config",
                    str(
                        config(
                            workdir / "embedded.yaml",
                            proxy_port=EMBEDDED_PORTS[0],
                            control_port=EMBEDDED_PORTS[1],
                            redis_url=None,
                        )
                    ),
                ],
                cwd=ROOT,
            )
        )
        wait_http(f"http://127.0.0.1:{EMBEDDED_PORTS[1]}/health/ready")  # its data plane too
        local, local_sent = asyncio.run(
            propagation(args.changes, EMBEDDED_PORTS[1], [EMBEDDED_PORTS[0]])
        )
        local_rollback = asyncio.run(rollbacks(args.rollbacks, EMBEDDED_PORTS[1], 1))
        embedded = wrk(
            "memory",
            f"http://127.0.0.1:{EMBEDDED_PORTS[0]}",
            connections=32,
            duration=args.duration,
            script=script,
        )
    text = f"""## Flag propagation and emergency rollback (issue 3)

Measured by `make bench` (`benchmarks/propagation.py`) on {time.strftime("%Y-%m-%d")}, on
the same 2-core machine: redis-server, `abgate control` and {PROXIES} `abgate proxy`
processes (4 sidecars, one port each), the nginx upstream and the probing client all share
the two cores.

| what | samples | p50 ms | p99 ms | max ms | target |
|---|---:|---:|---:|---:|---|
{
        row(
            f"control API answer -> all {PROXIES} proxies route with it",
            changes,
            f"p99 <= 50 ms: {verdict(percentile(changes, 99) <= 50)}",
        )
    }
{
        row(
            f"rollback of all experiments, confirmed by all {PROXIES}",
            rollback,
            f"< 1000 ms: {verdict(max(rollback) < 1000)}",
        )
    }

Propagation is pub/sub: the write's Lua script publishes the new flag, each proxy's sync task
applies it to its in-memory table (no request ever waits on Redis). The rollback call returns
once every registered instance has reported the new version in its registry entry (each
proxy reports immediately after applying a change).

Embedded (`abgate run`, no Redis): the control process pushes each change to its data plane
over the local live-state channel (a Unix socket); a write is answered once the data plane
reports that it routes with it, so the first row below is about 0 by construction and the
second is the whole write (the API call included).

| what | samples | p50 ms | p99 ms | max ms | target |
|---|---:|---:|---:|---:|---|
{
        row(
            "control API answer -> the data plane routes with it",
            local,
            f"p99 <= 50 ms: {verdict(percentile(local, 99) <= 50)}",
        )
    }
{
        row(
            "write sent -> the data plane routes with it",
            local_sent,
            f"p99 <= 50 ms: {verdict(percentile(local_sent, 99) <= 50)}",
        )
    }
{
        row(
            "rollback of all experiments, confirmed by the data plane",
            local_rollback,
            f"< 1000 ms: {verdict(max(local_rollback) < 1000)}",
        )
    }

Throughput of one proxy by flag backend (wrk -t1 -c32 -d{args.duration}s, same upstream):

| backend | req/s | p50 ms | p99 ms |
|---|---:|---:|---:|
{wrk_row("redis (`abgate proxy`, flags pushed by pub/sub)", with_redis)}
{wrk_row("memory (`abgate run`, embedded: its data plane)", embedded)}

The request path is identical in both (flags are read from memory); the difference is run to
run noise on a shared 2-core machine.
"""
    write_section("propagation", text)
    print(text)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
