"""abgate's throughput and latency with shadow mode at 100% and with the breaker open, next to
the plain configuration, on the same nginx upstream and wrk settings as benchmarks/run.py.

  plain         experiment at 0%: every request to the control arm
  shadow 100%   the same, plus a copy of every request to the treatment arm, compared on
                $.decision in the background
  breaker open  experiment at 100% with the treatment breaker forced open: every request
                falls back to the control arm (X-ABGate-Fallback: breaker-open)

    python -m benchmarks.resilience [--duration 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, process, verdict, wait_http, write_section
from benchmarks.run import LUA, PORTS, Result, bench_config, nginx_conf, require_tools, wrk

PROXY, CONTROL = 18380, 18392


def config(path: Path, *, percentage: int, shadow: bool) -> Path:
    experiment: dict[str, object] = {}
    if shadow:
        experiment["shadow"] = {"percentage": 100, "compare": ["$.decision"], "max_in_flight": 256}
    return bench_config(
        path, proxy_port=PROXY, control_port=CONTROL, percentage=percentage, experiment=experiment
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    nginx = require_tools("nginx", "wrk")
    if nginx is None:
        return 1
    abgate = [sys.executable, "-m", "abgate.control.cli", "--log-level", "ERROR", "run", "--config"]
    results: dict[str, tuple[Result, Result]] = {}
    shadow_stats: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as outer:
        workdir = Path(tmp)
        script = workdir / "users.lua"
        script.write_text(LUA)
        outer.enter_context(
            process([nginx, "-p", tmp, "-c", str(nginx_conf(workdir, proxy=False))])
        )
        wait_http(f"http://127.0.0.1:{PORTS['arm_a']}/")
        for name, percentage, shadow in (
            ("plain", 0, False),
            ("shadow 100%", 0, True),
            ("breaker open", 100, False),
        ):
            with process(
                [*abgate, str(config(workdir / "c.yaml", percentage=percentage, shadow=shadow))],
                cwd=ROOT,
            ):
                wait_http(f"http://127.0.0.1:{CONTROL}/health")
                if name == "breaker open":
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{CONTROL}/api/breakers/arm_b",
                        method="POST",
                        data=b'{"state": "forced_open"}',
                        headers={"Content-Type": "application/json"},
                    )
                    urllib.request.urlopen(request, timeout=5).close()
                url = f"http://127.0.0.1:{PROXY}"
                wrk(name, url, connections=32, duration=2, script=script)  # warm up
                loaded = wrk(name, url, connections=32, duration=args.duration, script=script)
                single = wrk(
                    name, url, connections=1, duration=max(3, args.duration // 2), script=script
                )
                results[name] = (loaded, single)
                if shadow:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{CONTROL}/api/shadow/stats"
                    ) as response:
                        shadow_stats = json.loads(response.read())["experiments"][0]
                print(f"{name}: {loaded.rps:,.0f} req/s", flush=True)
    plain_p50 = results["plain"][1].p50_ms
    shadow_verdict = verdict(results["shadow 100%"][1].p50_ms <= plain_p50 * 1.10)
    rows = "\n".join(
        f"| {name} | {loaded.rps:,.0f} | {loaded.p50_ms:.3f} | {loaded.p99_ms:.3f} | "
        f"{single.p50_ms * 1000:.0f} | {(single.p50_ms / plain_p50 - 1) * 100:+.0f}% |"
        for name, (loaded, single) in results.items()
    )
    text = f"""## Shadow mode and breaker open (issue 4)

Measured by `make bench` (`benchmarks/resilience.py`) on {time.strftime("%Y-%m-%d")}: the
same machine, nginx upstream and wrk settings as the throughput section; `abgate run`, one
process.

| configuration | req/s (c32) | p50 ms (c32) | p99 ms (c32) | p50 us (c1) | p50 vs plain (c1) |
|---|---:|---:|---:|---:|---:|
{rows}

Target: shadow at 100% raises the client's p50 by at most 10% (column "p50 vs plain" at one
connection): {shadow_verdict}. Shadow copies ran {shadow_stats.get("total_decisions", 0)}
comparisons,
dropped {shadow_stats.get("dropped", {})} (copies beyond `max_in_flight` are dropped, never
queued). Under saturating load (c32) the copies compete with live traffic for the same
CPU, so throughput drops: shadow costs a second upstream exchange per request.
"""
    write_section("resilience", text)
    print(text)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
