"""The real `abgate` command: CLI, graceful shutdown, workers sharing a port, streaming."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web

from tests.processes import abgate, config_document, write_config
from tests.servers import echo_app, serve_app

MiB = 1024 * 1024


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "abgate.control.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_version_and_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0
    assert re.fullmatch(r"abgate \d+\.\d+\.\d+\n", version.stdout)
    for command in ("run", "proxy", "check-config"):
        helped = run_cli(command, "--help")
        assert helped.returncode == 0
        assert f"usage: abgate {command}" in helped.stdout
    assert "--workers" in run_cli("proxy", "--help").stdout


async def test_sigterm_finishes_in_flight_requests(tmp_path: Path, session: ClientSession) -> None:
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(1.0)
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    async with serve_app(app) as upstream:
        config = write_config(tmp_path / "c.yaml", config_document(upstream))
        async with abgate(
            "run", "--config", str(config), expect={"proxy": 1, "control API": 1}
        ) as process:
            request = asyncio.create_task(session.get(f"{process.url('proxy')}/slow"))
            await arrived.wait()
            process.proc.terminate()  # SIGTERM while the request is in flight
            response = await request
            assert response.status == 200
            assert await response.text() == "finished"
            assert await process.wait() == 0


async def test_workers_share_the_port(tmp_path: Path, session: ClientSession) -> None:
    async with serve_app(echo_app()) as upstream:
        config = write_config(tmp_path / "c.yaml", config_document(upstream))
        async with abgate(
            "proxy", "--config", str(config), "--workers", "2", expect={"proxy": 2, "admin": 2}
        ) as process:
            proxy_urls = set(process.urls["proxy"])
            assert len(proxy_urls) == 1  # both workers on one port
            url = proxy_urls.pop()
            for _ in range(60):  # new connection each time: the kernel spreads them
                async with session.get(f"{url}/x", headers={"Connection": "close"}) as response:
                    assert response.status == 200
            served = []
            for admin in process.urls["admin"]:
                async with session.get(f"{admin}/metrics") as response:
                    text = await response.text()
                served.append(
                    sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in text.splitlines()
                        if line.startswith("abgate_requests_total")
                    )
                )
            assert sum(served) == 60
            assert all(count > 0 for count in served), served
            assert await process.stop() == 0


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return kib / 1024


async def test_100mb_bodies_stream_with_bounded_memory(
    tmp_path: Path, session: ClientSession
) -> None:
    size = 100 * MiB

    async def upload() -> AsyncIterator[bytes]:
        block = b"u" * MiB
        for _ in range(size // MiB):
            yield block

    async with serve_app(echo_app()) as upstream:
        document = config_document(upstream, max_body_size="1GiB")
        config = write_config(tmp_path / "c.yaml", document)
        async with abgate(
            "run", "--config", str(config), expect={"proxy": 1, "control API": 1}
        ) as process:
            base = process.url("proxy")
            async with session.get(f"{base}/warm-up") as response:
                assert response.status == 200
            (data_plane,) = process.pids["proxy"]  # the process that moves the bodies
            before = peak_rss_mib(data_plane)
            async with session.get(f"{base}/download/{size}") as response:
                assert response.headers["Content-Length"] == str(size)
                received = 0
                async for chunk in response.content.iter_chunked(MiB):
                    received += len(chunk)
            assert received == size
            headers = {"Content-Length": str(size)}
            async with session.post(f"{base}/upload", data=upload(), headers=headers) as response:
                assert (await response.json())["body_size"] == size
            async with session.post(f"{base}/upload-chunked", data=upload()) as response:
                assert (await response.json())["body_size"] == size
            growth = peak_rss_mib(data_plane) - before
            assert growth < 40, f"peak RSS grew {growth:.1f} MiB moving 300 MiB of bodies"
            assert await process.stop() == 0


def test_data_plane_does_not_load_scipy() -> None:
    """scipy costs tens of MiB; only processes that evaluate statistics may load it."""
    probe = (
        "import sys, abgate.control.cli, abgate.control.serve, abgate.control.supervisor, "
        "abgate.control.plane_half, abgate.proxy.runtime; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'numpy')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def experiment_document(control: str, treatment: str, **proxy: Any) -> dict[str, Any]:
    document = config_document(control, **proxy)
    document["upstreams"] = {"control": {"url": control}, "treatment": {"url": treatment}}
    document["routes"] = [{"prefix": "/", "experiment": "exp"}]
    document["experiments"] = {
        "exp": {
            "control": "control",
            "treatment": "treatment",
            "sticky": [{"header": "X-User-Id"}],
            "percentage": 50,
        }
    }
    return document


def mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


async def json_of(session: ClientSession, method: str, url: str, **kwargs: Any) -> Any:
    async with session.request(method, url, **kwargs) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_run_keeps_statistics_out_of_its_data_plane(
    tmp_path: Path, session: ClientSession
) -> None:
    """The first data after a start, evaluated: scipy is in the control process and never in
    the data plane (the first scipy.stats import froze proxying for 1.2-2.9 s)."""
    async with serve_app(echo_app()) as one, serve_app(echo_app()) as two:
        config = write_config(tmp_path / "c.yaml", experiment_document(one, two))
        async with abgate(
            "run", "--config", str(config), expect={"proxy": 1, "control API": 1}
        ) as process:
            (plane,), (control,) = process.pids["proxy"], process.pids["control API"]
            assert len({plane, control, process.pid}) == 3  # three processes
            for user in range(40):
                async with session.get(
                    f"{process.url('proxy')}/x", headers={"X-User-Id": f"u{user}"}
                ) as response:
                    assert response.status == 200
            aggregate = f"{process.url('control API')}/health/aggregate"

            async def evaluated() -> bool:
                report = await json_of(session, "GET", aggregate)
                worker = report["components"]["statistics_worker"]
                return worker["last_evaluation_age_seconds"] is not None

            async with asyncio.timeout(30):  # the worker evaluates every 3 s
                while not await evaluated():  # noqa: ASYNC110
                    await asyncio.sleep(0.1)  # another process: nothing to await but HTTP
            assert "/scipy/" in mapped_files(control)  # the check can see it ...
            assert "/scipy/" not in mapped_files(plane)  # ... and it is not here
            assert "/numpy/" not in mapped_files(plane)
            assert await process.stop() == 0


def gone(pid: int) -> bool:
    """Exited (a zombie counts: its parent, when not ours, reaps it on its own time)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (its children, theirs, ...), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return {p for p in found if not gone(p)}


async def test_run_restarts_a_child_that_dies_and_one_ctrl_c_stops_both(
    tmp_path: Path, session: ClientSession
) -> None:
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(1.0)
        return web.Response(text="finished")

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/{tail:.*}", answer)
    async with serve_app(app) as one, serve_app(echo_app()) as two:
        config = write_config(tmp_path / "c.yaml", experiment_document(one, two))
        async with abgate(
            "run", "--config", str(config), expect={"proxy": 1, "control API": 1}, session=True
        ) as process:
            control_url = process.url("control API")
            flag = await json_of(
                session, "POST", f"{control_url}/api/flags/exp", json={"percentage": 30}
            )

            # The data plane dies: started again, it takes the flags from the control process.
            (first_plane,) = process.pids["proxy"]
            os.kill(first_plane, signal.SIGKILL)
            proxy = await process.announced("proxy", 2)
            assert process.pids["proxy"][1] != first_plane
            assert "the data plane (pid" in "".join(process.output)
            assert "killed by SIGKILL" in "".join(process.output)
            async with session.get(f"{proxy}/x", headers={"X-User-Id": "u"}) as response:
                assert response.status == 200
            instances = (await json_of(session, "GET", f"{control_url}/api/instances"))["instances"]
            assert [(i["pid"], i["applied"], i["converged"]) for i in instances] == [
                (process.pids["proxy"][1], {"exp": flag["version"]}, True)
            ]

            # The control process dies (no state file here): the data plane answers on, and
            # the new control process takes the newer flags from it. Its statistics process
            # (and the fork server it came from) end with it: none waits on for good.
            (first_control,) = process.pids["control API"]
            async with asyncio.timeout(60):  # the worker's first tick starts it
                while len(statistics := descendants(first_control)) < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # another process: nothing to await
            os.kill(first_control, signal.SIGKILL)
            async with asyncio.timeout(60):
                while not all(gone(pid) for pid in statistics):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            async with session.get(f"{proxy}/x", headers={"X-User-Id": "v"}) as response:
                assert response.status == 200
            control_url = await process.announced("control API", 2)

            async def ready() -> bool:
                async with session.get(f"{control_url}/health/ready") as response:
                    return response.status == 200

            async with asyncio.timeout(30):  # until the data plane is connected again
                while not await ready():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # another process: nothing to await but HTTP
            current = await json_of(session, "GET", f"{control_url}/api/flags/exp")
            assert (current["version"], current["percentage"]) == (flag["version"], 30)

            # One Ctrl-C (SIGINT to the whole group): a request in flight finishes, both stop.
            await json_of(session, "POST", f"{control_url}/api/flags/exp", json={"percentage": 0})
            request = asyncio.create_task(session.get(f"{proxy}/slow"))  # to the control arm
            await arrived.wait()
            os.killpg(process.pid, signal.SIGINT)
            response = await request
            assert response.status == 200
            assert await response.text() == "finished"
            assert await process.wait() == 0
            children = [*process.pids["proxy"], *process.pids["control API"]]
            assert all(gone(pid) for pid in children)
    # Stopped cleanly after its control process was killed: no traceback, and nothing
    # (semaphores, processes) left for multiprocessing to warn of.
    output = "".join(process.output)
    assert "Traceback" not in output, output
    assert "leaked" not in output, output


async def test_the_children_stop_when_abgate_run_is_killed(tmp_path: Path) -> None:
    async with serve_app(echo_app()) as upstream:
        config = write_config(tmp_path / "c.yaml", config_document(upstream))
        async with abgate(
            "run", "--config", str(config), expect={"proxy": 1, "control API": 1}
        ) as process:
            children = [*process.pids["proxy"], *process.pids["control API"]]
            process.proc.kill()  # SIGKILL: no chance to stop them
            await process.wait()
            async with asyncio.timeout(30):
                while not all(gone(pid) for pid in children):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # other processes: nothing to await
