"""Isolation of the data plane (issue 23): its latency at 200 req/s idle, and while the
control process works.

`abgate run` (two processes: the data plane and the control process), an nginx `return 200`
upstream, and a probe in a process of its own sending one request every 5 ms on a fixed
schedule (open loop: latency from the scheduled send, a stall shows as the latency users
would see). Cases, each against the idle figures of the same stack:

  a  statistics ticks over 100 experiments x 30 phases, with Redis (measurements seeded
     before the window: 2 arms x 2 metrics x CLUSTERS clusters per phase); idle = the same
     stack with no measurements
  b  the first data after a start: the first seconds from the moment `abgate run` is ready
     (first flushes, first evaluations with data); idle = the same process later
  c  a reload of a 1 MB config (the same routes first, then thousands more) and of the
     alias bomb (refused); the window runs from 1 s before the reload to 2 s after it

Goal: p99 within +1 ms of idle in every case. The machine is shared: `uptime` is noted.

    python -m benchmarks.isolation [--seconds 20] [--rate 200] [--code DIR]

`--code DIR` runs the abgate of another checkout (e.g. one before this change) for
comparison; RESULTS.md is written only for this checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import RESULTS, ROOT, process, verdict, wait_http, write_section

PORTS = {"arm_a": 18601, "arm_b": 18602, "proxy": 18680, "control": 18692, "redis": 18679}
PATH = "/api/agent/credit/decide"
EXPERIMENTS, PHASES, CLUSTERS = 100, 30, 32
BODY = '{"source":"deterministic","decision":"approve","confidence":0.9}'
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{level}: &{level} [{','.join([f'*{previous}'] * 9)}]\n"
    for previous, level in zip("abcdefgh", "bcdefghi", strict=True)
)


# -- the probe (a process of its own) ----------------------------------------------------


async def probe(url: str, rate: float) -> dict[str, Any]:
    """Send until stdin closes (the benchmark says when the window is over)."""
    from aiohttp import ClientSession, ClientTimeout, TCPConnector

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    samples: list[tuple[float, float]] = []
    errors = 0
    tasks: set[asyncio.Task[None]] = set()
    async with ClientSession(
        timeout=ClientTimeout(total=10), connector=TCPConnector(limit=200)
    ) as session:

        async def one(index: int, scheduled: float) -> None:
            nonlocal errors
            try:
                async with session.post(
                    url, data=b"{}", headers={"X-User-Id": f"u{index % 5000}"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        if errors == 1:
                            print(f"probe: HTTP {response.status}", file=sys.stderr)
                        return
            except (TimeoutError, OSError) as exc:
                errors += 1
                if errors == 1:
                    print(f"probe: {exc!r}", file=sys.stderr)
                return
            samples.append((scheduled - start, (loop.time() - scheduled) * 1000))

        start, wall = loop.time(), time.time()
        print("started", file=sys.stderr, flush=True)
        index = -1
        while not stop.is_set():
            index += 1
            scheduled = start + index / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(index, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return {"start": wall, "samples": samples, "errors": errors}


@dataclass
class Window:
    name: str
    latencies: list[float]
    errors: int = 0
    waited: float = 0.0  # seconds the data plane waited for a CPU (its run queue)
    seconds: float = 0.0  # how long that was measured

    @property
    def waited_ms_per_s(self) -> float:
        return 1000 * self.waited / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return self.quantile(0.99)


class Probe:
    """The probe process: sending from its start until `result()`."""

    def __init__(self, rate: float) -> None:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.isolation",
                "--probe",
                f"http://127.0.0.1:{PORTS['proxy']}{PATH}",
                "--rate",
                str(rate),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self._proc.stderr is not None
        self._proc.stderr.readline()  # "started": its schedule begins now

    def result(self) -> dict[str, Any]:
        out, _ = self._proc.communicate(timeout=600)  # closes stdin: the probe stops
        data: dict[str, Any] = json.loads(out)
        return data


def probed(args: argparse.Namespace) -> dict[str, Any]:
    probe = Probe(args.rate)
    waited = RunQueue()
    time.sleep(args.seconds)
    data = probe.result()
    data["waited"] = waited.since()
    return data


class RunQueue:
    """How long the data plane (the process listening on the proxy port) waited for a CPU
    since this was made: /proc/PID/schedstat's run delay. Tells the machine's contention
    (other work, our control process) from the data plane's own loop."""

    def __init__(self) -> None:
        self.pid = _listening_pid(PORTS["proxy"])
        self.started, self.delay = time.monotonic(), self._delay()

    def _delay(self) -> float:
        if self.pid is None:
            return 0.0
        try:
            return int(Path(f"/proc/{self.pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def since(self) -> tuple[float, float]:
        return self._delay() - self.delay, time.monotonic() - self.started


def _listening_pid(port: int) -> int | None:
    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"pid=(\d+)", out)
    return int(match.group(1)) if match else None


def window(
    name: str, data: dict[str, Any], since: float = 0.0, until: float = float("inf")
) -> Window:
    """Latencies of the requests scheduled between `since` and `until` (wall clock), or all."""
    start = data["start"]
    chosen = [ms for offset, ms in data["samples"] if since <= start + offset <= until]
    waited, seconds = data.get("waited", (0.0, 0.0))
    return Window(name, chosen, data["errors"], waited, seconds)


# -- the stack ----------------------------------------------------------------------------


def nginx_config(workdir: Path) -> Path:
    servers = "\n".join(
        f"server {{ listen 127.0.0.1:{PORTS[arm]}; access_log off; "
        f"location / {{ default_type application/json; return 200 '{BODY}'; }} }}"
        for arm in ("arm_a", "arm_b")
    )
    path = workdir / "nginx.conf"
    path.write_text(
        f"worker_processes 1; daemon off; pid {workdir}/nginx.pid; error_log {workdir}/nginx.log;"
        f"\nevents {{ worker_connections 1024; }}\nhttp {{ access_log off; "
        f"client_body_temp_path {workdir}; proxy_temp_path {workdir}; fastcgi_temp_path "
        f"{workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};\n{servers}\n}}\n"
    )
    return path


def document(*, redis_url: str | None, experiments: int = EXPERIMENTS, routes: int = 0) -> Any:
    """The probe's experiment first, then `experiments - 1` more, then `routes` padding
    routes (the 1 MB config)."""
    upstreams = {arm: {"url": f"http://127.0.0.1:{PORTS[arm]}"} for arm in ("arm_a", "arm_b")}
    names = ["bench", *(f"exp{i}" for i in range(1, experiments))]
    return {
        "proxy": {"listen": f"127.0.0.1:{PORTS['proxy']}", "admin_listen": "127.0.0.1:0"},
        "control": {"listen": f"127.0.0.1:{PORTS['control']}"},
        "flags": {"state_file": None, **({"redis_url": redis_url} if redis_url else {})},
        "upstreams": upstreams,
        "routes": [
            {"prefix": "/api/agent/", "experiment": "bench"},
            *({"prefix": f"/{name}/", "experiment": name} for name in names[1:]),
            *({"prefix": f"/padding/{i}/", "upstream": "arm_a"} for i in range(routes)),
        ],
        "experiments": {
            name: {
                "control": "arm_a",
                "treatment": "arm_b",
                "sticky": [{"header": "X-User-Id"}],
                "percentage": 50,
            }
            for name in names
        },
    }


def write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def megabyte_config(path: Path, redis_url: str | None) -> Path:
    routes = 1000
    while True:  # as many padding routes as make 1 MB
        text = yaml.safe_dump(document(redis_url=redis_url, routes=routes), sort_keys=False)
        if len(text) >= 1024 * 1024:
            path.write_text(text)
            return path
        routes = int(routes * 1024 * 1024 / len(text)) + 1


@contextlib.contextmanager
def abgate_run(config: Path, code: Path) -> Iterator[float]:
    """`abgate run` until the block ends; yields when it became ready (wall clock)."""
    with process(
        [
            sys.executable,
            "-m",
            "abgate.control.cli",
            "--log-level",
            "WARNING",
            "run",
            "--config",
            str(config),
        ],
        cwd=code,
    ):
        wait_http(f"http://127.0.0.1:{PORTS['control']}/health/ready", timeout=60)
        wait_http(f"http://127.0.0.1:{PORTS['proxy']}{PATH}", timeout=60)
        yield time.time()


def post(path: str) -> tuple[int, float]:
    """POST to the control API; (status, seconds it took)."""
    started = time.perf_counter()
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORTS['control']}{path}", data=b"", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.perf_counter() - started


async def seed(redis_url: str) -> int:
    """Measurements of 100 experiments x 30 phases, as flushes would have written them."""
    from abgate.state.measurements import UNCLUSTERED, Phase, Sums
    from abgate.state.redis_client import connect
    from abgate.state.redis_measurements import RedisMeasurements

    client = connect(redis_url)
    store = RedisMeasurements(client, "abgate")
    fields = 0
    try:
        for index in range(EXPERIMENTS):
            name = "bench" if index == 0 else f"exp{index}"
            for phase in range(1, PHASES + 1):
                await store.start_phase(name, Phase(phase, 5000, time.time()))
                batch = {
                    (name, phase, arm, metric, cluster): Sums(
                        40 + cluster, 0.5 * (40 + cluster), 0.3 * (40 + cluster)
                    )
                    for arm in ("arm_a", "arm_b")
                    for metric in ("error", "latency")
                    for cluster in (*range(CLUSTERS - 1), UNCLUSTERED)
                }
                await store.add(batch)
                fields += 3 * len(batch)
    finally:
        await client.aclose()
    return fields


async def tick_seconds(config: Path, redis_url: str) -> float:
    """One statistics tick over the seeded data, timed here (the control process's work)."""
    from abgate.config import load_config
    from abgate.control.stats_worker import StatsWorker
    from abgate.state.redis_client import connect
    from abgate.state.redis_measurements import RedisMeasurements

    client = connect(redis_url)
    try:
        worker = StatsWorker(load_config(config), RedisMeasurements(client, "abgate"))
        started = time.perf_counter()
        await worker.evaluate_all()
        return time.perf_counter() - started
    finally:
        await client.aclose()


# -- the cases ----------------------------------------------------------------------------
# Each case alternates idle and event windows for --rounds rounds on the same stack, so
# that the machine's own load (shared with other work) weighs on both alike; the samples of
# all rounds of a kind are pooled.


def pooled(name: str, windows: list[Window]) -> Window:
    return Window(
        name,
        [ms for w in windows for ms in w.latencies],
        sum(w.errors for w in windows),
        sum(w.waited for w in windows),
        sum(w.seconds for w in windows),
    )


def case_statistics(args: argparse.Namespace, workdir: Path, code: Path) -> dict[str, Any]:
    """Idle windows with the seeded measurements renamed away (RENAME is O(1): the worker
    finds nothing and ticks in microseconds), tick windows with them back."""
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    redis_url = f"redis://127.0.0.1:{PORTS['redis']}/0"
    port = str(PORTS["redis"])
    command = [redis, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    idle, ticks = [], []
    with process(command):
        time.sleep(0.3)
        fields = asyncio.run(seed(redis_url))
        config = write(workdir / "redis.yaml", document(redis_url=redis_url))
        with abgate_run(config, code):
            for _ in range(args.rounds):
                asyncio.run(move_measurements(redis_url, away=True))
                time.sleep(4)  # a tick begun over the data ends
                idle.append(window("idle", probed(args)))
                asyncio.run(move_measurements(redis_url, away=False))
                time.sleep(1)  # the next tick reads them
                ticks.append(window("ticks", probed(args)))
        tick = asyncio.run(tick_seconds(config, redis_url))
    return {
        "idle": pooled("idle (Redis; the measurements renamed away)", idle),
        "cases": [pooled(f"statistics ticks, {EXPERIMENTS} x {PHASES} phases", ticks)],
        "rounds": {"idle": idle, "event": ticks},
        "fields": fields,
        "tick": tick,
    }


async def move_measurements(redis_url: str, *, away: bool) -> None:
    from abgate.state.redis_client import connect

    client = connect(redis_url)
    try:
        pattern = "{abgate}:stats:*" if away else "away:{abgate}:stats:*"
        for key in [str(k) async for k in client.scan_iter(match=pattern, count=1000)]:
            await client.rename(key, f"away:{key}" if away else key.removeprefix("away:"))
    finally:
        await client.aclose()


def case_start(args: argparse.Namespace, workdir: Path, code: Path) -> dict[str, Any]:
    config = write(workdir / "embedded.yaml", document(redis_url=None))
    first, idle = [], []
    for _ in range(args.rounds):
        with abgate_run(config, code):
            first.append(window("first", probed(args)))
            idle.append(window("idle", probed(args)))
    return {
        "idle": pooled("idle (embedded; the same process, later)", idle),
        "cases": [pooled("the first data after a start", first)],
        "rounds": {"idle": idle, "event": first},
    }


def case_reload(args: argparse.Namespace, workdir: Path, code: Path) -> dict[str, Any]:
    config = write(workdir / "reload.yaml", document(redis_url=None))
    original = config.read_text()
    big = megabyte_config(workdir / "big.yaml", None).read_text()
    events: dict[str, list[Window]] = {
        "a reload of a 1 MB config": [],
        "a reload of the alias bomb": [],
    }
    texts = {"a reload of a 1 MB config": big, "a reload of the alias bomb": ALIAS_BOMB + original}
    idle: list[Window] = []
    reloads: dict[str, list[tuple[int, float]]] = {name: [] for name in events}
    with abgate_run(config, code):
        time.sleep(3)
        for _ in range(args.rounds):
            idle.append(window("idle", probed(args)))
            for name, windows in events.items():
                probe = Probe(args.rate)
                waited = RunQueue()
                time.sleep(1.5)
                before = time.time()
                config.write_text(texts[name])  # the watcher may start first: same window
                status, took = post("/api/config/reload")
                after = time.time()
                time.sleep(2.5)
                data = probe.result()
                data["waited"] = waited.since()
                windows.append(window(name, data, before - 1.0, after + 2.0))
                reloads[name].append((status, took))
                config.write_text(original)
                post("/api/config/reload")
                time.sleep(2)
    return {
        "idle": pooled("idle (embedded)", idle),
        "cases": [pooled(name, windows) for name, windows in events.items()],
        "rounds": {"idle": idle, **{f"event {name}": w for name, w in events.items()}},
        "reloads": {name: (runs, len(texts[name])) for name, runs in reloads.items()},
    }


def uptime() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split(" ")[:3])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout to run")
    parser.add_argument("--cases", default="abc")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(asyncio.run(probe(args.probe, args.rate))))
        return 0
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        print("benchmarks: needs nginx and redis-server (make test-servers)", file=sys.stderr)
        return 1
    loads: dict[str, str] = {}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        stack.enter_context(process([nginx, "-p", str(workdir), "-c", str(nginx_config(workdir))]))
        wait_http(f"http://127.0.0.1:{PORTS['arm_a']}/")
        for key, run in (("a", case_statistics), ("b", case_start), ("c", case_reload)):
            if key in args.cases:
                loads[key] = uptime()
                results[key] = run(args, workdir, args.code)
                loads[key] += " -> " + uptime()
    text = render(args, results, loads)
    print(text)
    if args.code.resolve() == ROOT:
        write_section("isolation", text)
        print(f"wrote {RESULTS}")
    return 0


def render(
    args: argparse.Namespace, results: dict[str, dict[str, Any]], loads: dict[str, str]
) -> str:
    rows = []
    for key, result in results.items():
        idle: Window = result["idle"]
        rows.append(
            f"| {key} | {idle.name} | {len(idle.latencies)} | {idle.p50:.2f} | {idle.p99:.2f} "
            f"| {max(idle.latencies):.2f} | | {idle.waited_ms_per_s:.0f} | {loads[key]} |"
        )
        for case in result["cases"]:
            met = case.p99 <= idle.p99 + 1.0
            rows.append(
                f"| {key} | {case.name} | {len(case.latencies)} | {case.p50:.2f} | "
                f"{case.p99:.2f} | {max(case.latencies):.2f} | {case.p99 - idle.p99:+.2f} ms: "
                f"{verdict(met)} | {case.waited_ms_per_s:.0f} | {loads[key]} |"
            )
    table = "\n".join(rows)
    notes = []
    if "a" in results:
        a = results["a"]
        notes.append(
            f"(a) {a['fields']:,} hash fields seeded in Redis; one statistics tick over them "
            f"takes {a['tick']:.1f} s of the control process (timed separately afterwards)."
        )
    if "c" in results:
        for name, (runs, size) in results["c"]["reloads"].items():
            answers = ", ".join(f"HTTP {status} after {took:.2f} s" for status, took in runs)
            notes.append(f"(c) {name} ({size:,} bytes): {answers}.")
    for key, result in results.items():
        per_round = "; ".join(
            f"{kind}: " + ", ".join(f"{w.p99:.1f}" for w in windows)
            for kind, windows in result["rounds"].items()
        )
        notes.append(f"({key}) p99 ms per round: {per_round}.")
    return f"""## Isolation of the data plane (issue 23)

Measured by `benchmarks/isolation.py` on {time.strftime("%Y-%m-%d")}, on the shared 2-core
machine: `abgate run` (its data plane and control process), nginx `return 200` as both arms,
redis-server for (a), and a probe process sending {args.rate:g} requests a second on a fixed
schedule (latency from the scheduled send, milliseconds), {args.seconds:g} s per window,
{args.rounds} rounds alternating idle and event windows on the same stack (pooled below;
each round's p99 in the notes). A reload's window runs from 1 s before the reload to 2 s
after its answer.
Goal: p99 within +1 ms of idle in every case. "CPU wait" is how long the data plane's
process waited for a CPU while runnable, per second of the window (/proc/PID/schedstat):
the machine's contention, as opposed to its own loop. Load average (1, 5, 15 min) before
-> after each case in the last column.

| case | window | requests | p50 ms | p99 ms | max ms | p99 over idle | CPU wait ms/s | load |
|---|---|---:|---:|---:|---:|---|---:|---|
{table}

{chr(10).join(notes)}
"""


if __name__ == "__main__":
    sys.exit(main())
