"""Signals, handled in one place: SIGTERM/SIGINT ask to stop; previous handlers come back.
`abgate run`'s supervisor (control/supervisor.py) forwards them to its children in order."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


@asynccontextmanager
async def on_signal(sig: signal.Signals, callback: Callable[[], None]) -> AsyncIterator[None]:
    """Call `callback` (sync, from the loop) on `sig` while inside the block."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(sig, callback)
    try:
        yield
    finally:
        loop.remove_signal_handler(sig)


@asynccontextmanager
async def stop_on_signals(*signals: signal.Signals) -> AsyncIterator[asyncio.Event]:
    """Yield an event set by the first of `signals` (default SIGTERM and SIGINT)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    chosen = signals or (signal.SIGTERM, signal.SIGINT)
    for sig in chosen:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in chosen:
            loop.remove_signal_handler(sig)


@asynccontextmanager
async def stop_on_signals_or_orphaned(
    parent: int, *signals: signal.Signals
) -> AsyncIterator[asyncio.Event]:
    """`stop_on_signals`, and also when `parent` (this process's end of a pipe from the
    process that started it, which never writes to it) becomes readable: its other end
    closed, the parent is gone. A child of `abgate run` never outlives its supervisor."""
    loop = asyncio.get_running_loop()
    async with stop_on_signals(*signals) as stop:
        loop.add_reader(parent, stop.set)
        try:
            yield stop
        finally:
            loop.remove_reader(parent)


def ignore_signals(*signals: signal.Signals) -> None:
    """For a child whose parent orders its stop: a Ctrl-C in a terminal reaches the whole
    process group, and the order in which `abgate run`'s processes stop matters."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
