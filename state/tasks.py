"""Stopping the background tasks a process owns, for certain.

A single `task.cancel()` is not enough: redis-py can swallow a CancelledError that lands
inside one of its reads with a timeout, and a loop that swallowed it sleeps and goes on, so
an owner awaiting the task would wait forever (seen as a rare hang at shutdown with Redis).
`stop_task` cancels again until the task is done; the next cancel lands elsewhere (a sleep,
another await) and ends it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("abgate")
RECANCEL_EVERY = 0.5  # seconds


async def stop_task(task: asyncio.Task[Any], *, grace: float = 30.0) -> None:
    """Cancel `task` (again, while it lives) and wait for it; give up after `grace`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_EVERY)
        if loop.time() > deadline:
            log.error("task %s did not stop within %gs; abandoning it", task.get_name(), grace)
            return
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s ended with an error", task.get_name(), exc_info=task.exception())


async def stop_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*(stop_task(task) for task in tasks))
