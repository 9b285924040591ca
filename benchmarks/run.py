"""Throughput and latency of abgate next to the upstream alone and nginx split_clients.

Everything runs on this machine, on 127.0.0.1, with the same upstream and the same wrk
settings for every target:

  upstream   nginx answering a small JSON body (`return 200`), two server blocks (the arms);
             the demo agent instead when nginx is not installed
  direct     wrk -> upstream
  abgate     wrk -> `abgate proxy` (1 worker: sticky split on X-User-Id, metrics and
             measurements on, breaker on) -> upstream
  nginx      wrk -> nginx, 1 worker, split_clients on X-User-Id, upstream keep-alive -> upstream

wrk sends a different X-User-Id on every request (100,000 distinct users, seeded), so the
split hashes a new key each time. Results go to benchmarks/RESULTS.md.

    python -m benchmarks.run [--duration 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, process, verdict, wait_http, write_section

BODY = '{"source":"deterministic","decision":"approve","confidence":1.0}'
LUA = """
math.randomseed(42)
request = function()
  local user = "user-" .. math.random(1, 100000)
  return wrk.format(nil, "/api/agent/credit/decide", {["X-User-Id"] = user})
end
"""
PORTS = {"arm_a": 18101, "arm_b": 18102, "abgate": 18180, "control": 18192, "nginx": 18190}


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float = 0.0


def parse_wrk(name: str, output: str) -> Result:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def percentile(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    value, unit = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    max_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return Result(name, rps, percentile("50"), percentile("99"), max_ms)


def wrk(name: str, url: str, *, connections: int, duration: int, script: Path) -> Result:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"{name}: errors under load:\n{output}")
    return parse_wrk(name, output)


def nginx_conf(workdir: Path, *, proxy: bool) -> Path:
    arms = "\n".join(
        f"""    server {{ listen 127.0.0.1:{PORTS[arm]}; access_log off;
        location / {{ default_type application/json; return 200 '{BODY}'; }} }}"""
        for arm in ("arm_a", "arm_b")
    )
    split = f"""
    split_clients "${{http_x_user_id}}" $arm {{ 50% arm_b; * arm_a; }}
    upstream arm_a {{ server 127.0.0.1:{PORTS["arm_a"]}; keepalive 64; }}
    upstream arm_b {{ server 127.0.0.1:{PORTS["arm_b"]}; keepalive 64; }}
    server {{ listen 127.0.0.1:{PORTS["nginx"]}; access_log off;
        location / {{ proxy_pass http://$arm; proxy_http_version 1.1;
                     proxy_set_header Connection ""; }} }}"""
    text = f"""worker_processes 1; daemon off; pid {workdir}/nginx-{int(proxy)}.pid;
error_log {workdir}/error-{int(proxy)}.log;
events {{ worker_connections 4096; }}
http {{
    access_log off; keepalive_requests 1000000;
    client_body_temp_path {workdir}; proxy_temp_path {workdir};
    fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
{arms if not proxy else split}
}}
"""
    path = workdir / f"nginx-{'proxy' if proxy else 'upstream'}.conf"
    path.write_text(text)
    return path


def bench_config(
    path: Path,
    *,
    proxy_port: int,
    control_port: int,
    percentage: float = 50,
    proxy: dict[str, object] | None = None,
    experiment: dict[str, object] | None = None,
    flags: dict[str, object] | None = None,
    history: dict[str, object] | None = None,
) -> Path:
    """The benchmark experiment: /api/agent/ split between the two nginx arms on X-User-Id."""
    path.write_text(
        json.dumps(
            {  # JSON is YAML
                "proxy": {
                    "listen": f"127.0.0.1:{proxy_port}",
                    "admin_listen": "127.0.0.1:0",
                    **(proxy or {}),
                },
                "control": {"listen": f"127.0.0.1:{control_port}"},
                "flags": {"state_file": None, **(flags or {})},
                "upstreams": {
                    "arm_a": {"url": f"http://127.0.0.1:{PORTS['arm_a']}"},
                    "arm_b": {"url": f"http://127.0.0.1:{PORTS['arm_b']}"},
                },
                **({"history": history} if history else {}),
                "routes": [{"prefix": "/api/agent/", "experiment": "bench"}],
                "experiments": {
                    "bench": {
                        "control": "arm_a",
                        "treatment": "arm_b",
                        "sticky": [{"header": "X-User-Id"}],
                        "percentage": percentage,
                        **(experiment or {}),
                    }
                },
            }
        )
    )
    return path


def require_tools(*tools: str) -> str | None:
    """The nginx binary if every tool is installed; None (and a message) otherwise."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    missing = [t for t in tools if shutil.which(t) is None and t != "nginx"]
    if "nginx" in tools and not Path(nginx).exists():
        missing.append("nginx")
    if missing:
        print(f"benchmarks: needs {', '.join(missing)} (make test-servers)", file=sys.stderr)
        return None
    return nginx


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmarks: wrk is not installed (make test-servers installs it)", file=sys.stderr)
        return 1
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    abgate = [sys.executable, "-m", "control.cli", "--log-level", "WARNING", "proxy", "--config"]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        script = workdir / "users.lua"
        script.write_text(LUA)
        if nginx:
            stack.enter_context(
                process([nginx, "-p", tmp, "-c", str(nginx_conf(workdir, proxy=False))])
            )
            upstream_kind = "nginx `return 200` (small JSON)"
        else:
            for arm in ("arm_a", "arm_b"):
                stack.enter_context(
                    process(
                        [
                            sys.executable,
                            "scripts/demo_agent.py",
                            "--kind",
                            "deterministic",
                            "--port",
                            str(PORTS[arm]),
                        ],
                        cwd=ROOT,
                    )
                )
            upstream_kind = "bundled demo agent (nginx not installed)"
        wait_http(f"http://127.0.0.1:{PORTS['arm_a']}/api/agent/credit/decide")
        wait_http(f"http://127.0.0.1:{PORTS['arm_b']}/api/agent/credit/decide")
        ab = stack.enter_context(
            process(
                [
                    *abgate,
                    str(
                        bench_config(
                            workdir / "abgate.yaml",
                            proxy_port=PORTS["abgate"],
                            control_port=PORTS["control"],
                        )
                    ),
                ],
                cwd=ROOT,
            )
        )
        wait_http(f"http://127.0.0.1:{PORTS['abgate']}/api/agent/credit/decide")
        if nginx:
            stack.enter_context(
                process([nginx, "-p", tmp, "-c", str(nginx_conf(workdir, proxy=True))])
            )
            wait_http(f"http://127.0.0.1:{PORTS['nginx']}/api/agent/credit/decide")

        targets = {"direct": PORTS["arm_a"], "abgate": PORTS["abgate"]}
        if nginx:
            targets["nginx split_clients"] = PORTS["nginx"]
        loaded, single = {}, {}
        for name, port in targets.items():
            url = f"http://127.0.0.1:{port}"
            wrk(name, url, connections=args.connections, duration=2, script=script)  # warm up
            loaded[name] = wrk(
                name, url, connections=args.connections, duration=args.duration, script=script
            )
            single[name] = wrk(
                name, url, connections=1, duration=max(3, args.duration // 2), script=script
            )
            print(f"{name}: {loaded[name].rps:,.0f} req/s", flush=True)
        memory = rss_mib(ab.pid)
    write_results(args, loaded, single, memory, upstream_kind)
    print(f"wrote {RESULTS}")
    return 0


def write_results(
    args: argparse.Namespace,
    loaded: dict[str, Result],
    single: dict[str, Result],
    memory: float,
    upstream_kind: str,
) -> None:
    direct, ours = loaded["direct"], loaded["abgate"]
    added_p50 = (single["abgate"].p50_ms - single["direct"].p50_ms) * 1000
    added_p99 = (single["abgate"].p99_ms - single["direct"].p99_ms) * 1000
    reference = loaded.get("nginx split_clients")
    versus_nginx = f"{ours.rps / reference.rps:.2f}x" if reference else "n/a (no nginx)"
    memory_mb = memory * 1.048576
    nginx_verdict = verdict(ours.rps / reference.rps >= 0.40) if reference else "not measured"
    rows = []
    for name, result in loaded.items():
        ratio_nginx = f"{result.rps / reference.rps:.2f}" if reference else "n/a"
        rows.append(
            f"| {name} | {result.rps:,.0f} | {result.p50_ms:.3f} | {result.p99_ms:.3f} "
            f"| {ratio_nginx} | {result.rps / direct.rps:.2f} |"
        )
    single_rows = [
        f"| {name} | {r.p50_ms * 1000:.0f} | {r.p99_ms * 1000:.0f} | "
        f"{(r.p50_ms - single['direct'].p50_ms) * 1000:+.0f} | "
        f"{(r.p99_ms - single['direct'].p99_ms) * 1000:+.0f} |"
        for name, r in single.items()
    ]
    cpu = platform.processor() or platform.machine()
    text = f"""## Throughput and latency (issue 2)

Measured by `make bench` (`benchmarks/run.py`) on {time.strftime("%Y-%m-%d")}, on this
project's development machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}.
wrk, the upstream, abgate and nginx all share those cores, as in production-like sidecar use
on a small node. Upstream: {upstream_kind}. abgate: `abgate proxy`, one worker, uvloop, an
experiment splitting 50/50 on `X-User-Id` with metrics, measurements and the breaker on.
nginx: one worker, `split_clients` on the same header, upstream keep-alive 64. Every request
carries a different user (wrk Lua script, 100,000 distinct keys).

### Throughput (wrk -t1 -c{args.connections} -d{args.duration}s)

| target | req/s | p50 ms | p99 ms | x nginx | x direct |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

### Added latency at one connection (wrk -t1 -c1)

| target | p50 us | p99 us | p50 over direct us | p99 over direct us |
|---|---:|---:|---:|---:|
{chr(10).join(single_rows)}

### Memory

Resident memory of the abgate worker after the runs above (100,000 distinct sticky keys):
{memory:.1f} MiB. (`abgate run` also holds the control API and the statistics worker, whose
scipy adds about 50 MiB; a data-plane worker never loads it.)

### Targets (issue 2)

| target | goal | measured | result |
|---|---|---|---|
| throughput vs nginx, one worker each | >= 0.40x | {versus_nginx} | {nginx_verdict} |
| added p50 at one connection | <= 120 us | {added_p50:.0f} us | {verdict(added_p50 <= 120)} |
| added p99 at one connection | <= 1000 us | {added_p99:.0f} us | {verdict(added_p99 <= 1000)} |
| worker RSS with 100k keys | < 80 MB | {memory_mb:.1f} MB | {verdict(memory_mb < 80)} |
"""
    write_section("throughput", text + NOTES)


NOTES = """
### Notes from profiling

- A proxy on aiohttp's `ClientSession` spent most of its time in the client (request and
  response objects, cookie jar, header multidicts, decompression checks); abgate's upstream
  side is an asyncio Protocol around httptools' llhttp parser with its own keep-alive pool
  (`proxy/upstream.py`, `proxy/pool.py`), and the request head is built as one bytes object.
- The server side is aiohttp's low-level `web.Server` (no router, no middlewares, no access
  log); aiohttp's HTTP parser and response writer are then the largest share of a request.
- Metrics are plain counters indexed at wiring time (`proxy/metrics.py`); prometheus-client's
  own Counter/Histogram would take a lock and a label lookup per request.
- The split costs one FNV-1a pass over the key per request (the seed's state is precomputed).
"""


if __name__ == "__main__":
    sys.exit(main())
