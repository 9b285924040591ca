"""`abgate run`: its control process and its data plane, each a process of its own, started,
watched and stopped together by this one.

- Start: both at once; the control process listens on the live-state channel (a Unix socket
  in a private temporary directory), the data plane connects to it as soon as it can (and
  serves before, if it must wait long); each says when it is ready.
- A child that dies after it was ready is started again after a backoff (0.5 s, doubling to
  30 s; back to 0.5 s once it ran a minute), with a log line saying which and how it ended.
  Meanwhile the other goes on: the data plane routes with the flags it has and keeps its
  measurements for later; the control API answers 503 for what only the data plane knows.
  A child that fails before it was ever ready stops everything (a port in use or a bad
  file does not heal by retrying).
- One SIGTERM or SIGINT (Ctrl-C) stops both, in order: the data plane first, which drains
  its in-flight requests (proxy.shutdown_timeout) and sends its last measurements, then the
  control process, which saves the state file. SIGHUP goes to the control process (reload).
  The children ignore SIGINT: a Ctrl-C in a terminal reaches the whole process group.
- A child whose supervisor is gone (killed) stops by itself: it watches its end of a pipe.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import uvloop

from abgate.config import ConfigError
from abgate.control.api import check_exposure
from abgate.control.log import configure_logging
from abgate.control.signals import ignore_signals, stop_on_signals_or_orphaned
from abgate.control.wiring import announce

log = logging.getLogger("abgate")
RESTART_FIRST, RESTART_MAX = 0.5, 30.0
STEADY = 60.0  # seconds up after which a child's restart backoff starts over
CONTROL_STOP = 30.0  # seconds the control process has to save and stop
CONTROL_NICE = 10
PLANE_WAIT = 10.0  # seconds the control API waits for the data plane's hello to open


def _setup(*ignored: signal.Signals) -> None:
    ignore_signals(signal.SIGINT, *ignored)
    configure_logging(os.environ.get("ABGATE_LOG_LEVEL", "INFO"))


def _run_child(name: str, main: Coroutine[Any, Any, None]) -> None:
    try:
        uvloop.run(main)
    except (ConfigError, ValueError, OSError) as exc:  # a port in use, a refused file
        log.error(
            "abgate run: the %s cannot go on: %s",
            name,
            exc.render() if isinstance(exc, ConfigError) else exc,
        )
        sys.exit(1)


def control_main(config_path: str, channel: str, parent: Connection) -> None:
    """The control process (a spawned child), below the data plane in the CPU's queue: on a
    busy machine a statistics tick waits, not the requests."""
    os.nice(CONTROL_NICE)
    _setup()
    _run_child("control process", _serve_control(config_path, channel, parent))


async def _serve_control(config_path: str, channel: str, parent: Connection) -> None:
    from abgate.control.config_process import parse_file
    from abgate.control.control_half import control_half

    parsed = parse_file(config_path)
    token = os.environ.get("ABGATE_CONTROL_TOKEN") or None
    async with (
        stop_on_signals_or_orphaned(parent.fileno(), signal.SIGTERM) as stop,
        control_half(
            parsed.config,
            channel,
            token=token,
            config_path=config_path,
            parsed=parsed,
            wait_for_plane=PLANE_WAIT,
        ) as half,
    ):
        announce(
            f"abgate control API listening on {half.control_url} "
            f"(control process, pid {os.getpid()})"
        )
        parent.send("ready")
        await stop.wait()
        # Told to stop with the data plane (a SIGTERM to the whole group, as systemd sends):
        # its drain and last measurements first, while the channel is still here.
        await half.server.disconnected(parsed.config.proxy.shutdown_timeout + 5.0)


def plane_main(config_path: str, channel: str, parent: Connection) -> None:
    """The data plane (a spawned child)."""
    _setup(signal.SIGHUP)  # reloads come parsed from the control process
    _run_child("data plane", _serve_plane(config_path, channel, parent))


async def _serve_plane(config_path: str, channel: str, parent: Connection) -> None:
    from abgate.control.plane_half import data_plane_half, read_config

    parsed = await read_config(config_path, channel)
    async with (
        stop_on_signals_or_orphaned(parent.fileno(), signal.SIGTERM) as stop,
        data_plane_half(parsed.config, channel, config_digest=parsed.digest, freeze=True) as half,
    ):
        announce(f"abgate proxy listening on {half.proxy_url} (data plane, pid {os.getpid()})")
        parent.send("ready")
        await stop.wait()
        log.info(
            "stopping: draining in-flight requests (up to %gs)",
            parsed.config.proxy.shutdown_timeout,
        )


@dataclass
class Child:
    name: str
    main: Callable[[str, str, Connection], None]
    stop_within: float
    process: BaseProcess | None = None
    pipe: Connection | None = None
    ready_once: bool = False
    started_at: float = 0.0
    backoff: float = RESTART_FIRST
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(self, config_path: str, channel: Path, shutdown_timeout: float) -> None:
        self._config_path = config_path
        self._channel = channel
        self._context = multiprocessing.get_context("spawn")
        self.control = Child("control process", control_main, CONTROL_STOP)
        # The drain, the last flush, then the history writer's last flush (same grace).
        self.plane = Child("data plane", plane_main, 2 * shutdown_timeout + 15.0)
        self._events: asyncio.Queue[tuple[str, Child | None]] = asyncio.Queue()
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP, self.control)
        try:
            return await self._watch()
        finally:  # signals while stopping change nothing (the handlers stay until done)
            await self._stop_child(self.plane)  # drains first; its last flush needs control
            await self._stop_child(self.control)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        self._stopping.set()
        self._events.put_nowait(("stop", None))

    def _forward(self, sig: signal.Signals, child: Child) -> None:
        if child.process is not None and child.process.is_alive() and child.process.pid:
            os.kill(child.process.pid, sig)

    async def _watch(self) -> int:
        self._start(self.control)
        self._start(self.plane)  # at once: it connects as soon as the control process listens
        while True:
            kind, child = await self._events.get()
            if kind == "stop":
                return 0
            assert child is not None
            if kind == "ready":
                child.ready_once = True
                continue
            code = child.process.exitcode if child.process is not None else None
            if not child.ready_once:
                log.error(
                    "abgate run: the %s exited before it was ready (%s); stopping",
                    child.name,
                    _how(code),
                )
                return 1
            up = asyncio.get_running_loop().time() - child.started_at
            if up >= STEADY:
                child.backoff = RESTART_FIRST
            log.error(
                "abgate run: the %s (pid %s) exited (%s) after %.1fs; restarting it in %gs",
                child.name,
                child.process.pid if child.process is not None else "?",
                _how(code),
                up,
                child.backoff,
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), child.backoff)
                return 0  # asked to stop meanwhile
            except TimeoutError:
                pass
            child.backoff = min(child.backoff * 2, RESTART_MAX)
            self._start(child)

    def _start(self, child: Child) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=child.main,
            args=(self._config_path, str(self._channel), theirs),
            name=f"abgate-{child.name.replace(' ', '-')}",
        )
        process.start()
        theirs.close()
        child.process, child.pipe = process, ours
        child.started_at = loop.time()
        child.exited = asyncio.Event()
        loop.add_reader(ours.fileno(), self._message, child)
        loop.add_reader(process.sentinel, self._exited, child)

    def _message(self, child: Child) -> None:
        assert child.pipe is not None
        try:
            child.pipe.recv()  # "ready": the only message
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(child.pipe.fileno())
            return
        self._events.put_nowait(("ready", child))

    def _exited(self, child: Child) -> None:
        loop = asyncio.get_running_loop()
        assert child.process is not None
        assert child.pipe is not None
        loop.remove_reader(child.process.sentinel)
        loop.remove_reader(child.pipe.fileno())
        child.process.join()
        child.pipe.close()
        child.exited.set()
        if not self._stopping.is_set():
            self._events.put_nowait(("exit", child))

    async def _stop_child(self, child: Child) -> None:
        process = child.process
        if process is None or child.exited.is_set():
            return
        self._forward(signal.SIGTERM, child)
        try:
            await asyncio.wait_for(child.exited.wait(), child.stop_within)
        except TimeoutError:
            log.error(
                "abgate run: the %s did not stop within %gs; killing it",
                child.name,
                child.stop_within,
            )
            process.kill()
            await child.exited.wait()


def _how(code: int | None) -> str:
    if code is None:
        return "status unknown"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def run_supervised(config_path: str) -> int:
    """`abgate run`: validate the file here first (a bad one exits 1 with its problems, as
    before), then start and watch both processes until told to stop."""
    from abgate.config.parse import load_config  # the parser: only where a file is read

    config = load_config(config_path)
    check_exposure(config, os.environ.get("ABGATE_CONTROL_TOKEN") or None)
    directory = Path(tempfile.mkdtemp(prefix="abgate-"))  # 0700: only this user may connect
    try:
        supervisor = Supervisor(config_path, directory / "live.sock", config.proxy.shutdown_timeout)
        return uvloop.run(supervisor.run())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
