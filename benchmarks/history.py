"""The history store's cost and capacity (issue 13), and the outcome record's cost (issue 11).

writer      HistoryWriter into a PostgreSQL started here (initdb, fsync off as in the
            tests): 20 flushes of 50,000 decisions, one binary COPY each -> decisions/s
throughput  wrk -c32 against `abgate proxy` (nginx arms), alternating in the same run:
            before the outcome record (commit BEFORE, from a git worktree), today without
            history, today with history (every request recorded); best of three each
outage      PostgreSQL killed during 20 s of load with history on: the proxy's RSS before
            and after (the buffer is bounded: history.buffer records)

  python -m benchmarks.history [--duration 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from abgate.state.history.writer import HistoryWriter
from benchmarks.common import ROOT, process, verdict, wait_http, write_section
from benchmarks.run import LUA, PORTS, bench_config, nginx_conf, require_tools, rss_mib, wrk
from tests.postgres_server import postgres_server

BEFORE = "d6c5a86"  # the last commit before the outcome record
PROXY_PORTS = {"before": 18280, "today": 18281, "history": 18282}


async def writer_rate(url: str) -> float:
    writer = HistoryWriter(url, instance="bench", capacity=1_000_000, retention_days=90)
    await writer.flush()  # migrate first
    total = 0
    started = time.perf_counter()
    for round_ in range(20):
        now = time.time()
        for i in range(50_000):  # distinct request ids: each is a new record, none a retry
            writer.add_decision(
                (now, f"req-{round_}-{i}", "bench", 1, "treatment", 1234, "arm_b", 200,
                 0.0012, None, None)
            )  # fmt: skip
        await writer.flush()
        total += 50_000
    elapsed = time.perf_counter() - started
    await writer.aclose()
    return total / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    nginx = require_tools("wrk", "nginx")
    if nginx is None:
        return 1
    asyncio.run(run(args, nginx))
    return 0


async def run(args: argparse.Namespace, nginx: str) -> None:
    async with postgres_server() as postgres:
        rate = await writer_rate(postgres.url)
        print(f"writer: {rate:,.0f} decisions/s", flush=True)
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            workdir = Path(tmp)
            before = workdir / "before"
            subprocess.run(  # noqa: ASYNC221 (set-up, before any measurement)
                ["git", "worktree", "add", "--detach", str(before), BEFORE],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            stack.callback(
                subprocess.run,
                ["git", "worktree", "remove", "--force", str(before)],
                cwd=ROOT,
                check=False,
                capture_output=True,
            )
            script = workdir / "users.lua"
            script.write_text(LUA)
            stack.enter_context(
                process([nginx, "-p", tmp, "-c", str(nginx_conf(workdir, proxy=False))])
            )
            wait_http(f"http://127.0.0.1:{PORTS['arm_a']}/api/agent/credit/decide")
            pids = {}
            for name, port in PROXY_PORTS.items():
                history: dict[str, object] | None = None
                if name == "history":
                    history = {"postgres_url": postgres.url}
                config = bench_config(
                    workdir / f"{name}.yaml",
                    proxy_port=port,
                    control_port=port + 100,
                    history=history,
                )
                command = [
                    sys.executable,
                    "-m",
                    "abgate.control.cli",
                    "--log-level",
                    "WARNING",
                    "proxy",
                    "--config",
                    str(config),
                ]
                proc = stack.enter_context(
                    process(command, cwd=before if name == "before" else ROOT)
                )
                wait_http(f"http://127.0.0.1:{port}/api/agent/credit/decide")
                pids[name] = proc.pid
            best = {name: 0.0 for name in PROXY_PORTS}
            for _ in range(args.rounds):
                for name, port in PROXY_PORTS.items():
                    url = f"http://127.0.0.1:{port}"
                    wrk(name, url, connections=32, duration=1, script=script)
                    result = wrk(name, url, connections=32, duration=args.duration, script=script)
                    best[name] = max(best[name], result.rps)
                    print(f"{name}: {result.rps:,.0f} req/s", flush=True)
            rss_before = rss_mib(pids["history"])
            await postgres.kill()
            url = f"http://127.0.0.1:{PROXY_PORTS['history']}"
            await asyncio.to_thread(wrk, "outage", url, connections=32, duration=20, script=script)
            rss_after = rss_mib(pids["history"])
    record = best["today"] / best["before"]
    history_cost = 1 - best["history"] / best["today"]
    rows = [
        (
            "history writer into PostgreSQL (binary COPY, 50,000 per flush)",
            f"{rate:,.0f} decisions/s",
            f">= 50,000: {verdict(rate >= 50_000)}",
        ),
        (f"before the outcome record ({BEFORE})", f"{best['before']:,.0f} req/s", ""),
        (
            "today, history off",
            f"{best['today']:,.0f} req/s ({record:.3f}x before)",
            f"within 3%: {verdict(record >= 0.97)}",
        ),
        (
            "today, history on (every request)",
            f"{best['history']:,.0f} req/s ({history_cost:+.1%} cost)",
            f"at most 5%: {verdict(history_cost <= 0.05)}",
        ),
        (
            "RSS with PostgreSQL killed for 20 s under load",
            f"{rss_before:.1f} -> {rss_after:.1f} MiB",
            "bounded (history.buffer: 200,000)",
        ),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    text = f"""## History store and outcome record (issues 11 and 13)

Measured by `python -m benchmarks.history` on {time.strftime("%Y-%m-%d")} (this machine, 2
cores shared by wrk, nginx, PostgreSQL and three `abgate proxy` processes, one worker each,
alternating {args.rounds} rounds of wrk -t1 -c32 -d{args.duration}s, best of each).
Rounds vary by 10-40% on this machine, hence the alternation and best-of. With history on,
PostgreSQL runs on the same two cores as everything else, so its own CPU for the inserts
is part of the cost measured here; on a database host of its own that share goes away.

| measure | result | target |
|---|---:|---|
{table}
"""
    write_section("history", text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
