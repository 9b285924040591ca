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
call and shut down with its owner. A worker that dies (killed, out of memory) is replaced:
the call is run once more on a fresh one, the loss is logged once and counted. What is sent
and returned is pickled: frozen dataclasses of sums and config, a few kilobytes.
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
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol, TypeVar

log = logging.getLogger("abgate.stats")
T = TypeVar("T")

# Imported once by the fork server, so that each worker forked from it starts with them.
PRELOAD = ["abgate.control.rollout.gates", "abgate.control.stats_worker"]


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


def _serve(owner: int) -> None:
    """A worker's start: it leaves Ctrl-C to its owner, which shuts it down (no traceback
    per worker), and ends when its owner does. An owner killed (SIGKILL, out of memory)
    never shuts it down, and the fork server it came from is not its owner, so nothing
    else would: it would wait on its queue for good, holding the owner's stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(owner,), name="owner-watch", daemon=True).start()


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


class StatisticsProcess:
    """One worker process for the statistics, owned: `aclose` shuts it down and waits."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self.replaced = 0  # workers lost and replaced (abgate_stats_process_restarts_total)

    def _started(self) -> ProcessPoolExecutor:
        if self._closed:
            raise RuntimeError("the statistics process is shut down")
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)  # before the server starts; else kept
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=context,
                initializer=_serve,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def run(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self._started()
            try:
                return await loop.run_in_executor(pool, function, *args)
            except BrokenProcessPool:
                if self._pool is pool:  # the first caller to see it replaces it
                    self._pool = None
                    self.replaced += 1
                    pool.shutdown(wait=False)
                    if self.replaced == 1:  # logged once; every one is counted
                        log.error(
                            "statistics: the worker process died; a new one is started and "
                            "the computation run again (each such restart is counted in "
                            "abgate_stats_process_restarts_total)"
                        )
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
