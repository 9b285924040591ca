"""Signals, handled in one place: SIGTERM/SIGINT ask to stop; previous handlers come back."""

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
