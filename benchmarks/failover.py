"""A Redis primary killed under traffic and a rollout, run several times (issue 30).

Runs tests/test_sentinel_failover.py as it is (a primary, a replica and three sentinels on
loopback with ACL users; two `abgate run` sidecars at 200 req/s; a five-stage rollout; the
primary killed at the 50% stage), each run in its own pytest process, and gathers the
figures each run writes: client errors, the time from the kill until a flag write is
answered 200 again, writes refused meanwhile, acknowledged writes lost, the stages the flag
went through, the controllers that acted. Sentinel's down-after-milliseconds is 1000 there:
most of the time to recover is Sentinel noticing and electing, which that setting scales.

    python -m benchmarks.failover [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, verdict, write_section

TEST = "tests/test_sentinel_failover.py::test_primary_killed_under_traffic_and_a_rollout"
HEAD = (
    "| run | requests | client errors | s until writes succeed | writes refused meanwhile "
    "| writes acknowledged | acknowledged lost | stages | controllers acted "
    "| writes short of a replica |\n|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
)


def run_once(figures: Path) -> dict[str, Any] | None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST],
        cwd=ROOT,
        env={**os.environ, "ABGATE_FAILOVER_FIGURES": str(figures)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        print(result.stdout[-4000:], file=sys.stderr)
        return None
    figures_of_run: dict[str, Any] = json.loads(figures.read_text())
    return figures_of_run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.runs):
            figures = run_once(Path(tmp) / f"run{index}.json")
            if figures is None:
                failed += 1
                continue
            print(json.dumps(figures), flush=True)
            runs.append(figures)
    if not runs:
        print("every run failed", file=sys.stderr)
        return 1
    rows = "\n".join(
        f"| {i + 1} | {r['requests']:,} | {r['client_errors']} | "
        f"{r['seconds_until_writes_succeed']:.2f} | {r['writes_refused_during_failover']} | "
        f"{r['writes_acknowledged']} | {r['acknowledged_writes_lost']} | "
        f"{' -> '.join(f'{p:g}' for p in r['stages'])} | {r['controllers_that_acted']} | "
        f"{r['unreplicated_writes']} |"
        for i, r in enumerate(runs)
    )
    recovery = [r["seconds_until_writes_succeed"] for r in runs]
    errors = sum(r["client_errors"] for r in runs)
    lost = sum(r["acknowledged_writes_lost"] for r in runs)
    text = f"""## Redis Sentinel failover under traffic and a rollout (issue 30)

Measured by `python -m benchmarks.failover` on {time.strftime("%Y-%m-%d")}: {len(runs)} runs
of `{TEST}` ({failed} failed) on the 2-core development machine. Each run: a primary, a
replica and three sentinels (`redis-server --sentinel`, quorum 2, down-after 1000 ms), ACL
users and a sentinel password; two `abgate run` sidecars (proxy, control API, rollout
controller each) behind 200 req/s; the rollout 5 -> 25 -> 50 -> 75 -> 100% (stages of 2 s
paced by time, the integrity gates on: a stage holds while statistics are stale); one flag write
every 50 ms to a second flag (`flags.redis.wait_replicas: 1`, `wait_timeout: 500ms`); the
primary SIGKILLed once the rollout reaches 50%.

{HEAD}
{rows}

Client errors: {errors} ({verdict(errors == 0)}, goal 0). Acknowledged flag writes lost:
{lost} ({verdict(lost == 0)}). Flag writes answer again {statistics.median(recovery):.2f} s
(median; max {max(recovery):.2f} s) after the kill: Sentinel's down-after (1 s here, 30 s by
default) plus its election, then one reconnect. Meanwhile writes answer 503 and nothing is
changed; requests never wait on Redis. Writes short of a replica are those after the
failover, when the new primary has no replica left: each waits `wait_timeout`, stands, and is
counted (`abgate_flag_writes_unreplicated_total`).
"""
    write_section("failover", text)
    print(text)
    print(f"wrote {RESULTS}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
