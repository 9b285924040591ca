"""A paired A/B of this checkout's data plane against another checkout's (`--baseline DIR`):
each round runs both under `wrk -c32` for 5 s (after a 1 s warm-up), the order alternated
round by round, and prints each round's req/s, the medians, and the median of the rounds'
ratios: the figure to trust on a machine whose speed drifts within a run.

    python -m benchmarks.ab_baseline --baseline /path/to/other/checkout --rounds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import ROOT
from benchmarks.run import (
    LUA,
    PORTS,
    rss_mib,
    start_abgate,
    start_upstream,
    wrk,
)
from tests.postgres_server import postgres_server


async def run(baseline: Path, rounds: int) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    async with postgres_server() as postgres:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            workdir = Path(tmp)
            script = workdir / "users.lua"
            script.write_text(LUA)
            start_upstream(stack, workdir, nginx)
            ports: dict[str, int] = {}
            pids: dict[str, int] = {}
            trees = [("this", ROOT, PORTS["abgate"]), ("baseline", baseline, PORTS["baseline"])]
            for index, (name, tree, port) in enumerate(trees):
                pids[name] = start_abgate(stack, workdir, index, port, 1, tree, postgres.url)
                ports[name] = port
            rps: dict[str, list[float]] = {name: [] for name in ports}
            for round_ in range(rounds):
                order = list(ports) if round_ % 2 == 0 else list(reversed(ports))
                for name in order:
                    url = f"http://127.0.0.1:{ports[name]}"
                    wrk(name, url, connections=32, duration=1, script=script)  # warm-up
                    rps[name].append(wrk(name, url, connections=32, duration=5, script=script).rps)
                    print(f"round {round_ + 1} {name}: {rps[name][-1]:,.0f} req/s", flush=True)
            for name, values in rps.items():
                print(
                    f"{name}: median {statistics.median(values):,.0f}, best {max(values):,.0f} "
                    f"req/s; RSS {rss_mib(pids[name]):.1f} MiB"
                )
            ratios = [a / b for a, b in zip(rps["this"], rps["baseline"], strict=True)]
            print(f"this / baseline, median of the rounds' ratios: {statistics.median(ratios):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args.baseline, args.rounds))


if __name__ == "__main__":
    main()
