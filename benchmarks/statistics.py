"""Statistics costs: a worker evaluation of 100 experiments x 5 metrics, and the proxy's
throughput and memory with measurements on and off (same nginx upstream and wrk settings as
benchmarks/run.py).

    python -m benchmarks.statistics [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from abgate.config import parse_config
from abgate.control.stats_worker import StatsWorker
from abgate.state.measurements import UNCLUSTERED, MemoryMeasurements, Phase, Sums
from benchmarks.common import RESULTS, ROOT, process, verdict, wait_http, write_section
from benchmarks.run import LUA, PORTS, Result, bench_config, nginx_conf, require_tools, rss_mib, wrk

PROXY, CONTROL = 18480, 18492


async def worker_timing(experiments: int = 100, runs: int = 20) -> list[float]:
    rng = random.Random(1)
    document = {
        "upstreams": {"a": {"url": "http://127.0.0.1:1"}, "b": {"url": "http://127.0.0.1:2"}},
        "routes": [{"prefix": "/", "upstream": "a"}],
        "flags": {"state_file": None},
        "experiments": {
            f"exp{i}": {
                "control": "a",
                "treatment": "b",
                "percentage": 50,
                "metrics": {
                    "accuracy": {"type": "binary", "direction": "higher"},
                    "revenue": {"type": "continuous", "direction": "higher"},
                    "confidence": {"type": "continuous", "direction": "higher"},
                },
            }
            for i in range(experiments)
        },
    }
    config = parse_config(yaml.safe_dump(document))
    store = MemoryMeasurements()
    for i in range(experiments):
        name = f"exp{i}"
        await store.start_phase(name, Phase(1, 2500, 0.0))
        await store.start_phase(name, Phase(2, 5000, 1.0))
        batch = {}
        for arm in ("a", "b"):
            for metric, binary in (
                ("latency", False),
                ("error", True),
                ("accuracy", True),
                ("revenue", False),
                ("confidence", False),
            ):
                sums = Sums()
                for _ in range(200):
                    value = float(rng.random() < 0.3) if binary else rng.gauss(1.0, 0.3)
                    sums.add(value)
                batch[(name, 2, arm, metric, UNCLUSTERED)] = sums
        await store.add(batch)
    worker = StatsWorker(config, store)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        reports = await worker.evaluate_all()
        timings.append((time.perf_counter() - started) * 1000)
    assert all(len(r.metrics) == 5 for r in reports.values())
    return timings


EXTRA = 100  # experiments with data, so each evaluation does the work of a busy deployment


def loaded_config(path: Path, offset: int) -> Path:
    """The benchmark experiment plus EXTRA more, each with three declared metrics."""
    bench_config(path, proxy_port=PROXY + offset, control_port=CONTROL + offset)
    document = json.loads(path.read_text())
    metrics = {
        "accuracy": {"type": "binary", "direction": "higher"},
        "revenue": {"type": "continuous", "direction": "higher"},
        "confidence": {"type": "continuous", "direction": "higher"},
    }
    for i in range(EXTRA):
        document["routes"].append({"prefix": f"/extra/{i}/", "experiment": f"extra{i}"})
        document["experiments"][f"extra{i}"] = {
            "control": "arm_a",
            "treatment": "arm_b",
            "percentage": 50,
            "metrics": metrics,
        }
    path.write_text(json.dumps(document))
    return path


def post_outcomes(control: str) -> None:
    """200 outcomes per arm and metric for every extra experiment."""
    rng = random.Random(2)
    for i in range(EXTRA):
        items = [
            {
                "experiment": f"extra{i}",
                "arm": arm,
                "metric": metric,
                "value": float(rng.random() < 0.3) if metric == "accuracy" else rng.gauss(1.0, 0.3),
                "user": None,  # synthetic outcomes of no decision: each its own unit
            }
            for arm in ("arm_a", "arm_b")
            for metric in ("accuracy", "revenue", "confidence")
            for _ in range(200)
        ]
        request = urllib.request.Request(
            f"{control}/api/outcomes",
            data=json.dumps(items).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()


def config(path: Path, measurements: bool, offset: int) -> Path:
    return bench_config(
        path,
        proxy_port=PROXY + offset,
        control_port=CONTROL + offset,
        proxy={"measurements": measurements},
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    timings = asyncio.run(worker_timing())
    nginx = require_tools("nginx", "wrk")
    if nginx is None:
        return 1
    abgate = [sys.executable, "-m", "abgate.control.cli", "--log-level", "ERROR", "run", "--config"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as outer:
        workdir = Path(tmp)
        script = workdir / "users.lua"
        script.write_text(LUA)
        outer.enter_context(
            process([nginx, "-p", tmp, "-c", str(nginx_conf(workdir, proxy=False))])
        )
        wait_http(f"http://127.0.0.1:{PORTS['arm_a']}/")
        procs, urls = {}, {}
        for offset, measurements in enumerate((False, True)):
            path = config(workdir / f"c{offset}.yaml", measurements, offset)
            procs[measurements] = outer.enter_context(process([*abgate, str(path)], cwd=ROOT))
            wait_http(f"http://127.0.0.1:{CONTROL + offset}/health")
            urls[measurements] = f"http://127.0.0.1:{PROXY + offset}"
        busy_path = loaded_config(workdir / "busy.yaml", 2)
        outer.enter_context(process([*abgate, str(busy_path)], cwd=ROOT))
        wait_http(f"http://127.0.0.1:{CONTROL + 2}/health")
        post_outcomes(f"http://127.0.0.1:{CONTROL + 2}")
        busy_url = f"http://127.0.0.1:{PROXY + 2}"
        for url in urls.values():  # warm up; the first statistics evaluation
            wrk("warm", url, connections=32, duration=4, script=script)  # loads scipy once
        early = {m: rss_mib(procs[m].pid) for m in urls}
        runs: dict[bool, list[Result]] = {False: [], True: []}
        for _ in range(3):  # alternate, so drift and noise hit both alike
            for measurements, url in urls.items():
                runs[measurements].append(
                    wrk("run", url, connections=32, duration=args.duration, script=script)
                )
        late = {m: rss_mib(procs[m].pid) for m in urls}
        wrk("warm", busy_url, connections=32, duration=4, script=script)
        single: dict[str, list[Result]] = {"1 experiment": [], f"{EXTRA + 1} experiments": []}
        for _ in range(3):  # one connection: what a request waits while an evaluation runs
            for name, url in ((f"{EXTRA + 1} experiments", busy_url), ("1 experiment", urls[True])):
                single[name].append(
                    wrk(name, url, connections=1, duration=args.duration, script=script)
                )
        results = {}
        for measurements in (False, True):
            best = max(runs[measurements], key=lambda r: r.rps)
            results[measurements] = best.rps
            rows.append(
                f"| {'on' if measurements else 'off'} | {best.rps:,.0f} | "
                f"{best.p50_ms:.3f} | {best.p99_ms:.3f} | {early[measurements]:.1f} | "
                f"{late[measurements]:.1f} |"
            )
    ratio = results[True] / results[False]
    single_rows = [
        f"| {name} | {' / '.join(f'{r.p50_ms:.3f}' for r in rounds)} | "
        f"{' / '.join(f'{r.p99_ms:.3f}' for r in rounds)} | "
        f"{' / '.join(f'{r.max_ms:.1f}' for r in rounds)} |"
        for name, rounds in single.items()
    ]
    median = statistics.median(timings)
    text = f"""## Statistics costs (issue 5)

Measured by `make bench` (`benchmarks/statistics.py`) on {time.strftime("%Y-%m-%d")}, same
machine and upstream as above.

Worker evaluation of 100 experiments x 5 metrics (2 binary, 3 continuous; fixed and
sequential test per metric, Holm, SRM per phase; sums in the embedded store), {len(timings)}
runs: median {median:.1f} ms, max {max(timings):.1f} ms (target 100 ms:
{verdict(max(timings) <= 100)} at the max, {verdict(median <= 100)} at the median).

Proxy with measurements off and on (`proxy.measurements`): both `abgate run` processes up side
by side, wrk -t1 -c32 -d{args.duration}s rounds alternating between them, best of three each.
RSS after a 4 s warm-up (which includes the statistics worker's first evaluation, where it
loads scipy) and after all rounds: the sums are per phase, arm and metric, so memory does not
grow with traffic.

| measurements | req/s | p50 ms | p99 ms | RSS after warm-up MiB | RSS after runs MiB |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Throughput with measurements on: {ratio:.3f}x of off (target within 5%: {verdict(ratio >= 0.95)}).

What an evaluation costs the requests on the same loop (`abgate run` evaluates on the
proxy's event loop every 3 s): the same process with {EXTRA} more experiments holding
outcomes in both arms (each evaluation then does {EXTRA + 1} experiments' tests, about the
work timed above), against one experiment; wrk -t1 -c1 -d{args.duration}s, alternating,
three rounds each, every round shown.

| stack | p50 ms | p99 ms | max ms |
|---|---|---|---|
{chr(10).join(single_rows)}

An evaluation blocks the loop for its duration once every 3 s, so it shows in the maximum
(a request that arrives during one waits for it) rather than at p99.
"""
    write_section("statistics", text)
    print(text)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
