"""Run the real `abgate` command as a subprocess and read where it listens."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LISTENING = re.compile(r"(proxy|control API|admin) (?:listening )?on (http://[\d.:\[\]]+)")
PID = re.compile(r"\bpid (\d+)")


@dataclass
class Process:
    proc: asyncio.subprocess.Process
    urls: dict[str, list[str]] = field(default_factory=dict)
    # Which process serves what: `abgate run` announces its data plane and control process.
    pids: dict[str, list[int]] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, kind: str) -> str:
        return self.urls[kind][0]

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM once, then wait for the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 60.0) -> int:
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def announced(self, kind: str, count: int, timeout: float = 60.0) -> str:
        """Wait for the `count`th announcement of `kind` (a restarted child); its URL."""
        async with asyncio.timeout(timeout):
            while len(self.urls.get(kind, [])) < count:
                if self.proc.returncode is not None:
                    raise RuntimeError("abgate exited:\n" + "".join(self.output))
                await asyncio.sleep(0.02)  # output arrives on its own schedule
        return self.urls[kind][count - 1]


def write_config(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def config_document(upstream_url: str, **proxy: Any) -> dict[str, Any]:
    return {
        "proxy": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", **proxy},
        "control": {"listen": "127.0.0.1:0"},
        "flags": {"state_file": None},
        "upstreams": {"echo": {"url": upstream_url}},
        "routes": [{"prefix": "/", "upstream": "echo"}],
    }


async def _spawn(
    args: tuple[str, ...], env: dict[str, str], *, session: bool = False
) -> asyncio.subprocess.Process:
    """`abgate ARGS`, stdout and stderr in one pipe; `session`: in a process group of its
    own, as a shell's job (for signals to the group)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "abgate.control.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=session,
    )


async def abgate_command(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """A command that ends (`abgate db migrate ...`): its exit status and all it printed."""
    proc = await _spawn(args, env)
    async with asyncio.timeout(60):
        output, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, output.decode()


@asynccontextmanager
async def abgate(
    *args: str,
    expect: dict[str, int],
    env: dict[str, str] | None = None,
    session: bool = False,
) -> AsyncIterator[Process]:
    """Start `abgate ARGS` and wait until it has announced `expect` (kind -> how many URLs);
    `env` adds to this process's environment; `session` as in `_spawn`."""
    proc = await _spawn(
        args, {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, session=session
    )
    process = Process(proc)
    reader_task = asyncio.create_task(_read_output(process))
    try:
        async with asyncio.timeout(120):
            while any(len(process.urls.get(kind, [])) < n for kind, n in expect.items()):
                if proc.returncode is not None or reader_task.done():
                    raise RuntimeError("abgate exited early:\n" + "".join(process.output))
                await asyncio.sleep(0.02)  # output arrives on its own schedule
        yield process
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader_task


async def _read_output(process: Process) -> None:
    assert process.proc.stdout is not None
    async for raw in process.proc.stdout:
        line = raw.decode(errors="replace")
        process.output.append(line)
        pid = PID.search(line)
        for kind, url in LISTENING.findall(line):
            process.urls.setdefault(kind, []).append(url)
            if pid is not None:
                process.pids.setdefault(kind, []).append(int(pid.group(1)))
