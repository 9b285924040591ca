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
import asyncio
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
from benchmarks.peers import caddy_conf, compiled_tree, haproxy_conf, install_peers, tree_cpu

BODY = '{"source":"deterministic","decision":"approve","confidence":1.0}'
LUA = """
math.randomseed(42)
request = function()
  local user = "user-" .. math.random(1, 100000)
  return wrk.format(nil, "/api/agent/credit/decide", {["X-User-Id"] = user})
end
"""
PORTS = {
    "arm_a": 18101,
    "arm_b": 18102,
    "abgate": 18180,
    "abgate2": 18181,
    "abgate_mypyc": 18182,
    "baseline": 18183,
    "control": 18192,
    "nginx": 18190,
    "haproxy": 18196,
    "caddy": 18197,
}
ABGATE = [sys.executable, "-m", "abgate.control.cli", "--log-level", "WARNING", "proxy"]


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


def nginx_conf(workdir: Path, *, proxy: bool, ports: dict[str, int] = PORTS) -> Path:
    arms = "\n".join(
        f"""    server {{ listen 127.0.0.1:{ports[arm]}; access_log off;
        location / {{ default_type application/json; return 200 '{BODY}'; }} }}"""
        for arm in ("arm_a", "arm_b")
    )
    split = f"""
    split_clients "${{http_x_user_id}}" $arm {{ 50% arm_b; * arm_a; }}
    upstream arm_a {{ server 127.0.0.1:{ports["arm_a"]}; keepalive 64; }}
    upstream arm_b {{ server 127.0.0.1:{ports["arm_b"]}; keepalive 64; }}
    server {{ listen 127.0.0.1:{ports["nginx"]}; access_log off;
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
    ports: dict[str, int] = PORTS,
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
                    "arm_a": {"url": f"http://127.0.0.1:{ports['arm_a']}"},
                    "arm_b": {"url": f"http://127.0.0.1:{ports['arm_b']}"},
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


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@dataclass
class CpuPerRequest:
    """Microseconds of the worker's CPU per answered request, in user space and the kernel."""

    user_us: float
    system_us: float


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    parser.add_argument("--no-mypyc", action="store_true", help="skip the compiled build")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of an earlier commit, measured alongside as `abgate (baseline)`",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmarks: wrk is not installed (make test-servers installs it)", file=sys.stderr)
        return 1
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    install_peers()
    asyncio.run(run(args, nginx))
    print(f"wrote {RESULTS}")
    return 0


# Every feature a user runs: the split, the breaker, measurements per cluster of users and
# distinct users, an extra metric read from the JSON body, the outcome record and its sinks,
# and the history buffer writing to a real PostgreSQL.
FEATURES: dict[str, object] = {
    "metrics": {"confidence": {"type": "continuous", "direction": "higher", "json": "$.confidence"}}
}


@dataclass
class Target:
    name: str
    port: int
    pid: int | None = None  # whose CPU is measured (with its children)
    split_pid: int | None = None  # abgate's worker: user and kernel time apart


async def run(args: argparse.Namespace, nginx: str | None) -> None:
    from tests.postgres_server import postgres_server

    async with postgres_server() as postgres:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            workdir = Path(tmp)
            script = workdir / "users.lua"
            script.write_text(LUA)
            upstream_kind = start_upstream(stack, workdir, nginx)
            targets = [Target("direct", PORTS["arm_a"])]
            compiled = compiled_tree(workdir) if not args.no_mypyc else None
            variants = [("abgate, 1 worker", 1, ROOT, PORTS["abgate"])]
            if compiled is not None:
                variants.append(("abgate + mypyc, 1 worker", 1, compiled, PORTS["abgate_mypyc"]))
            variants.append(("abgate, 2 workers", 2, ROOT, PORTS["abgate2"]))
            if args.baseline is not None:
                variants.append(
                    ("abgate (baseline), 1 worker", 1, args.baseline, PORTS["baseline"])
                )
            for index, (name, workers, tree, port) in enumerate(variants):
                pid = start_abgate(stack, workdir, index, port, workers, tree, postgres.url)
                targets.append(Target(name, port, pid, pid if workers == 1 else None))
            arms = (PORTS["arm_a"], PORTS["arm_b"])
            peers: list[tuple[str, int, list[str], dict[str, str] | None]] = []
            if nginx:
                conf = nginx_conf(workdir, proxy=True)
                peers.append(
                    (
                        "nginx split_clients",
                        PORTS["nginx"],
                        [nginx, "-p", tmp, "-c", str(conf)],
                        None,
                    )
                )
            if shutil.which("haproxy") or os.path.exists("/usr/sbin/haproxy"):  # noqa: ASYNC240
                peers.append(
                    (
                        "HAProxy, hdr(X-User-Id)",
                        PORTS["haproxy"],
                        haproxy_conf(workdir, PORTS["haproxy"], arms),
                        None,
                    )
                )
            if shutil.which("caddy"):
                caddy, caddy_env = caddy_conf(workdir, PORTS["caddy"], arms)
                peers.append(("Caddy, lb_policy header", PORTS["caddy"], caddy, caddy_env))
            for name, port, command, env in peers:
                proc = stack.enter_context(process(command, env=env))
                wait_http(f"http://127.0.0.1:{port}/api/agent/credit/decide")
                targets.append(Target(name, port, proc.pid))
            measured = await measure(args, targets, script)
            memory = rss_mib(targets[1].pid or 0)
    write_results(args, measured, memory, upstream_kind)


def start_abgate(
    stack: contextlib.ExitStack,
    workdir: Path,
    index: int,
    port: int,
    workers: int,
    tree: Path,
    postgres_url: str,
) -> int:
    """`abgate proxy` from the checkout `tree`, every feature on, answering on `port`; its
    pid. `index` keeps each variant's config file and control port apart."""
    config = bench_config(
        workdir / f"abgate-{index}.yaml",
        proxy_port=port,
        control_port=PORTS["control"] + index + 1,
        experiment=FEATURES,
        history={"postgres_url": postgres_url},
    )
    command = [*ABGATE, "--workers", str(workers), "--config", str(config)]
    pid = stack.enter_context(process(command, cwd=tree)).pid
    wait_http(f"http://127.0.0.1:{port}/api/agent/credit/decide")
    return pid


@dataclass
class Measured:
    loaded: dict[str, Result]  # best of the rounds by req/s
    single: dict[str, Result]  # best of the rounds by p50, one connection
    cpu_us: dict[str, list[float]]  # CPU per request (user + kernel, process tree), per round
    split_us: dict[str, list[CpuPerRequest]]  # abgate's one worker: user and kernel apart
    load: list[float]  # 1-minute load average before each round and after the last


async def measure(args: argparse.Namespace, targets: list[Target], script: Path) -> Measured:
    """Alternating rounds: each round runs every target in turn, under load and alone."""
    measured = Measured({}, {}, {}, {}, [])
    for round_ in range(args.rounds):
        measured.load.append(os.getloadavg()[0])
        for target in targets:
            url = f"http://127.0.0.1:{target.port}"
            await asyncio.to_thread(
                wrk, target.name, url, connections=args.connections, duration=1, script=script
            )
            before = tree_cpu(target.pid) if target.pid else 0.0
            split_before = cpu_seconds(target.split_pid) if target.split_pid else (0.0, 0.0)
            result = await asyncio.to_thread(
                wrk,
                target.name,
                url,
                connections=args.connections,
                duration=args.duration,
                script=script,
            )
            answered = result.rps * args.duration
            if target.pid:
                spent = tree_cpu(target.pid) - before
                measured.cpu_us.setdefault(target.name, []).append(spent / answered * 1e6)
            if target.split_pid:
                after = cpu_seconds(target.split_pid)
                measured.split_us.setdefault(target.name, []).append(
                    CpuPerRequest(
                        (after[0] - split_before[0]) / answered * 1e6,
                        (after[1] - split_before[1]) / answered * 1e6,
                    )
                )
            best = measured.loaded.get(target.name)
            if best is None or result.rps > best.rps:
                measured.loaded[target.name] = result
            one = await asyncio.to_thread(
                wrk, target.name, url, connections=1, duration=5, script=script
            )
            if (
                target.name not in measured.single
                or one.p50_ms < measured.single[target.name].p50_ms
            ):
                measured.single[target.name] = one
            print(f"round {round_ + 1} {target.name}: {result.rps:,.0f} req/s", flush=True)
    measured.load.append(os.getloadavg()[0])
    return measured


def start_upstream(
    stack: contextlib.ExitStack, workdir: Path, nginx: str | None, ports: dict[str, int] = PORTS
) -> str:
    if nginx:
        conf = nginx_conf(workdir, proxy=False, ports=ports)
        stack.enter_context(process([nginx, "-p", str(workdir), "-c", str(conf)]))
        kind = "nginx `return 200` (small JSON)"
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
                        str(ports[arm]),
                    ],
                    cwd=ROOT,
                )
            )
        kind = "bundled demo agent (nginx not installed)"
    wait_http(f"http://127.0.0.1:{ports['arm_a']}/api/agent/credit/decide")
    wait_http(f"http://127.0.0.1:{ports['arm_b']}/api/agent/credit/decide")
    return kind


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def target_rows(name: str, measured: Measured, reference: Result | None) -> list[str]:
    """The issue-28 targets for one abgate build, judged by this run."""
    ours, single = measured.loaded[name], measured.single
    ratio = ours.rps / reference.rps if reference else None
    cpu = median(measured.cpu_us[name])
    added_p50 = (single[name].p50_ms - single["direct"].p50_ms) * 1000
    added_p99 = (single[name].p99_ms - single["direct"].p99_ms) * 1000
    return [
        f"| {name}: throughput vs nginx, one worker each | >= 0.50x | "
        + (
            f"{ratio:.2f}x | {verdict(ratio >= 0.5)} |"
            if ratio is not None
            else "n/a | not measured |"
        ),
        f"| {name}: CPU per request (user + kernel) | <= 50 us | {cpu:.0f} us "
        f"| {verdict(cpu <= 50)} |",
        f"| {name}: added p50 at one connection | <= 100 us | {added_p50:.0f} us "
        f"| {verdict(added_p50 <= 100)} |",
        f"| {name}: added p99 at one connection | <= 1000 us | {added_p99:.0f} us "
        f"| {verdict(added_p99 <= 1000)} |",
    ]


def write_results(
    args: argparse.Namespace, measured: Measured, memory: float, upstream_kind: str
) -> None:
    loaded, single = measured.loaded, measured.single
    direct = loaded["direct"]
    reference = loaded.get("nginx split_clients")
    rows = []
    for name, result in loaded.items():
        cpu = measured.cpu_us.get(name)
        rows.append(
            f"| {name} | {result.rps:,.0f} | {result.p50_ms:.3f} | {result.p99_ms:.3f} "
            f"| {f'{median(cpu):.0f}' if cpu else 'n/a'} "
            f"| {f'{result.rps / reference.rps:.2f}' if reference else 'n/a'} "
            f"| {result.rps / direct.rps:.2f} |"
        )
    single_rows = [
        f"| {name} | {r.p50_ms * 1000:.0f} | {r.p99_ms * 1000:.0f} | "
        f"{(r.p50_ms - single['direct'].p50_ms) * 1000:+.0f} | "
        f"{(r.p99_ms - single['direct'].p99_ms) * 1000:+.0f} |"
        for name, r in single.items()
    ]
    split_rows = [
        f"| {name} | {median([c.user_us for c in cpus]):.0f} | "
        f"{median([c.system_us for c in cpus]):.0f} | "
        + ", ".join(f"{c.user_us + c.system_us:.0f}" for c in cpus)
        + " |"
        for name, cpus in measured.split_us.items()
    ]
    targets = [
        row
        for name in loaded
        if name.endswith("1 worker") and "baseline" not in name
        for row in target_rows(name, measured, reference)
    ]
    memory_mb = memory * 1.048576
    arch = platform.processor() or platform.machine()
    load = ", ".join(f"{value:.2f}" for value in measured.load)
    text = f"""## Throughput and latency (issues 2, 16 and 28)

Measured by `make bench` (`benchmarks/run.py`) on {time.strftime("%Y-%m-%d")}, on this
project's development machine: {os.cpu_count()} cores, {arch}, Python {platform.python_version()},
shared with other developers' test runs: the 1-minute load average before each round and
after the last was {load} (on 2 cores). wrk, the upstream, every proxy and PostgreSQL share
those cores. Upstream: {upstream_kind}. abgate: `abgate proxy` with **every feature on**: an
experiment splitting 50/50 on `X-User-Id`, the breaker, measurements per cluster of users and
distinct users, an extra metric read from the JSON body, the outcome record with its sinks,
and the history buffer writing to a real PostgreSQL; "abgate + mypyc" is the same with the
data plane compiled (`make compile`, optional). nginx: one worker, `split_clients` on the
same header, upstream keep-alive 64. HAProxy {tool_version("haproxy")}: one thread,
`balance hdr(X-User-Id)`, `http-reuse always`. Caddy {tool_version("caddy")}: `reverse_proxy`
with `lb_policy header X-User-Id`, GOMAXPROCS=1. Every request carries a different user (wrk
Lua script, 100,000 distinct keys). {args.rounds} alternating rounds (every target once per
round, in turn): req/s the best round, one connection the best p50, CPU per request the
median round.

### Throughput (wrk -t1 -c{args.connections} -d{args.duration}s)

| target | req/s | p50 ms | p99 ms | CPU us/req | x nginx | x direct |
|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

CPU per request: user and kernel time of the target's processes (from /proc, its workers
included) over the requests it answered in that round; for "direct", nginx's own is not
counted. The proxies are CPU-bound at these rates, so req/s is about 1 / (CPU per request)
and the rest is the machine's noise; the CPU figure is the steadier of the two here.

abgate's one worker, user and kernel apart (median of the rounds; then each round's total):

| build | user us | kernel us | each round, us |
|---|---:|---:|---|
{chr(10).join(split_rows)}

### Added latency at one connection (wrk -t1 -c1 -d5s)

| target | p50 us | p99 us | p50 over direct us | p99 over direct us |
|---|---:|---:|---:|---:|
{chr(10).join(single_rows)}

### Memory

Resident memory of the one-worker abgate (pure Python) after the runs above (100,000
distinct sticky keys): {memory:.1f} MiB (its 128 KiB distinct-users bitmap per arm included).

### Targets (issue 28, all features on, one worker, this run)

| target | goal | measured | result |
|---|---|---|---|
{chr(10).join(targets)}
| worker RSS with 100k keys | < 80 MB | {memory_mb:.1f} MB | {verdict(memory_mb < 80)} |
"""
    write_section("throughput", text + "\n" + NOTES.read_text())


def tool_version(tool: str) -> str:
    command = {"haproxy": ["haproxy", "-v"], "caddy": ["caddy", "version"]}[tool]
    try:
        output = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "(not installed)"
    match = re.search(r"(\d+\.\d+\.\d+)", output)
    return match.group(1) if match else "(version unknown)"


NOTES = ROOT / "benchmarks" / "throughput-notes.md"  # prose kept by people, appended as is


if __name__ == "__main__":
    sys.exit(main())
