"""Owned background tasks stop for certain, even when a library swallowed a cancel."""

from __future__ import annotations

import asyncio

from abgate.state.tasks import stop_task


async def test_a_task_that_swallows_its_first_cancel_still_stops() -> None:
    """The shape of the rare shutdown hang: a loop whose read (redis-py's, there) ate the
    CancelledError, so one cancel and an unbounded await would wait forever."""
    swallowed = asyncio.Event()
    rounds = 0

    async def loop_that_swallows_once() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await asyncio.sleep(3600)  # where the library read would be
            except asyncio.CancelledError:
                if not swallowed.is_set():
                    swallowed.set()  # eaten, as the library did: the loop goes on
                    continue
                raise

    task = asyncio.create_task(loop_that_swallows_once())
    await asyncio.sleep(0)
    async with asyncio.timeout(60):
        await stop_task(task)
    assert task.cancelled()
    assert swallowed.is_set()
    assert rounds == 2


async def test_a_task_that_never_stops_is_abandoned_after_the_grace() -> None:
    released = False

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if released:
                    raise
                continue  # swallows every cancel until released

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(60):
        await stop_task(task, grace=0.3)  # logged, not waited on forever
    assert not task.done()
    released = True  # the test's own cleanup
    await stop_task(task)
    assert task.cancelled()
