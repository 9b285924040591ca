"""Where the statistics are computed: a process of their own, beside the control process's
loop, not a thread in it.

The gates' `decide` and the statistics worker's `evaluate` are pure and CPU-bound (scipy;
a stage's first sizing solves its crossing grid, about a second). Run on the loop they
held the control API, and in one process the proxy. Run in a thread they shared the
loop's GIL: each of their thousands of short numpy and scipy calls gives the GIL up and
waits for it back behind a busy loop (CPython hands it over every 5 ms), so a busy control
process took 13 s instead of 1 for a stage's first decision, and a rollout under traffic
stood still (CI: test_load_test, a stage that never promoted while its traffic ran).

A process has a GIL of its own. `StatisticsProcess` keeps one worker process (forked from a
server that has the statistics imported, so it starts in milliseconds), started at the first
call and shut down with its owner; calls take turns on it over a pipe. A worker that dies
(killed, out of memory) is replaced and the call run once more on a fresh one; a computation
that runs past its limit has its worker killed (a hung one would stop the gates for good and
its owner's shutdown with them). Either is logged once, counted, and reaches the caller as
`StatisticsUnavailable`. What is sent and returned is pickled: frozen dataclasses of sums and
config, a few kilobytes. A bare pipe, not a ProcessPoolExecutor: its queues' semaphores
leaked (and were warned of) whenever the owner was killed, and it can neither time a call
out nor stop a worker that does not answer.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol, TypeVar, cast

from abgate.config.errors import AbgateError

log = logging.getLogger("abgate.stats")
T = TypeVar("T")

# Imported once by the fork server, so that each worker forked from it starts with them.
PRELOAD = ["abgate.control.rollout.gates", "abgate.control.stats_worker"]
COMPUTE_TIMEOUT = 60.0  # seconds: a stage's first sizing takes about 1 s, 3 s on a busy box
STOP_TIMEOUT = 5.0  # seconds a worker is given to end on its own at shutdown
SHUT_DOWN = "the statistics process is shut down"


class StatisticsUnavailable(AbgateError):
    """The statistics process could not compute this (it died twice in a row, or ran past
    COMPUTE_TIMEOUT); the caller keeps its last result and tries again at its next tick."""


class Offload(Protocol):
    """Runs a pure function off the loop, its result awaited."""

    replaced: int  # workers lost and replaced

    async def run(self, function: Callable[..., T], *args: object) -> T: ...


class InThread:
    """`asyncio.to_thread`: for a statistics worker or controller made without a process
    (a benchmark, a test of one part); `abgate run` and `abgate control` use a process."""

    replaced = 0

    async def run(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.to_thread(function, *args)


IN_THREAD = InThread()


def _serve(calls: Connection, owner: int) -> None:
    """The worker: each call received is run and its result (or exception) sent back, until
    the pipe closes. It leaves Ctrl-C to its owner, which stops it (no traceback per
    worker), and ends when its owner does: an owner killed (SIGKILL, out of memory) never
    closes the pipe, and the fork server it came from is not its owner, so nothing else
    would end it; it would wait on the pipe for good, holding the owner's stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(owner,), name="owner-watch", daemon=True).start()
    while True:
        try:
            function, args = calls.recv()
        except EOFError:
            return
        try:
            reply: tuple[bool, object] = (True, function(*args))
        except Exception as exc:
            reply = (False, exc)
        try:
            calls.send(reply)  # pickled before a byte is written: a refusal sends nothing
        except Exception as exc:  # a result or an exception pickle refuses
            calls.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


def _exit_with(owner: int) -> None:
    try:
        watched = os.pidfd_open(owner)  # Linux 5.3+: readable once the owner has exited
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # no pidfd here (macOS, an old kernel): poll
        while _alive(owner):
            time.sleep(1.0)
        os._exit(0)
    select.select([watched], [], [])
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class _WorkerLost(Exception):
    """The worker's end of the pipe is gone: it died."""


class _Worker:
    """One worker process and this side of its pipe."""

    def __init__(self, process: BaseProcess, calls: Connection) -> None:
        self.process = process
        self.calls = calls
        self.reading = False  # a thread waits on the pipe for an answer

    @classmethod
    async def start(cls) -> _Worker:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)  # before the server starts; else kept
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_serve, args=(theirs, os.getpid()), name="abgate-statistics", daemon=True
        )
        # In a thread: the first start waits for the fork server to import scipy (1-2 s).
        await asyncio.to_thread(process.start)
        theirs.close()
        return cls(process, ours)

    async def call(self, function: Callable[..., Any], args: tuple[object, ...]) -> Any:
        try:
            self.calls.send((function, args))
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            raise _WorkerLost from exc
        self.reading = True
        ok, value = await asyncio.to_thread(self._reply)
        if not ok:
            raise cast(BaseException, value)
        return value

    def _reply(self) -> tuple[bool, object]:
        try:
            reply: tuple[bool, object] = self.calls.recv()
        except (EOFError, OSError) as exc:
            raise _WorkerLost from exc
        finally:
            self.reading = False
        return reply

    def kill(self) -> None:
        """Killed at once (nothing if it has ended). A thread still reading the pipe sees
        its end, and the pipe is closed when that thread lets it go; closed here under that
        read, the descriptor's number could be another file's by then."""
        self.process.kill()
        self.process.join()
        if not self.reading:
            self.calls.close()

    def stop(self) -> None:
        """Ended at shutdown: idle, by closing the pipe (given STOP_TIMEOUT to end on its
        own); in the middle of a computation, or past that, killed."""
        if not self.reading:
            self.calls.close()
            self.process.join(STOP_TIMEOUT)
        self.kill()


class StatisticsProcess:
    """One worker process for the statistics, owned: `aclose` stops it and waits."""

    def __init__(self, timeout: float = COMPUTE_TIMEOUT) -> None:
        self.timeout = timeout
        self.replaced = 0  # workers lost or killed (abgate_stats_process_restarts_total)
        self._worker: _Worker | None = None
        self._turn = asyncio.Lock()  # one call at a time on the one worker
        self._closed = False

    async def run(self, function: Callable[..., T], *args: object) -> T:
        async with self._turn:
            for attempt in (1, 2):
                if self._closed:
                    raise StatisticsUnavailable(SHUT_DOWN)
                if self._worker is None:
                    self._worker = await _Worker.start()
                worker = self._worker
                try:
                    async with asyncio.timeout(self.timeout):
                        result: T = await worker.call(function, args)
                        return result
                except _WorkerLost:
                    if self._closed:  # stopped by aclose under this call
                        raise StatisticsUnavailable(SHUT_DOWN) from None
                    self._replace(worker, "its worker process died")
                    if attempt == 2:
                        raise StatisticsUnavailable(
                            "the statistics worker process died twice in a row"
                        ) from None
                except TimeoutError:
                    self._replace(worker, f"a computation ran past {self.timeout:g}s")
                    raise StatisticsUnavailable(
                        f"{getattr(function, '__name__', 'a computation')} ran past "
                        f"{self.timeout:g}s; its worker was killed"
                    ) from None
                except asyncio.CancelledError:
                    # Its answer would reach the next caller: this worker ends with the call.
                    self._replace(worker, None)
                    raise
        raise AssertionError("unreachable")

    def _replace(self, worker: _Worker, why: str | None) -> None:
        worker.kill()
        self._worker = None
        if why is None:
            return
        self.replaced += 1
        if self.replaced == 1:  # logged once; every one is counted
            log.error(
                "statistics: %s; a new worker is started for the next computation (each "
                "restart is counted in abgate_stats_process_restarts_total)",
                why,
            )

    async def aclose(self) -> None:
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.to_thread(worker.stop)
