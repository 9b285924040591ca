"""The data-plane half of `abgate run`: a process whose event loop runs proxying, flag sync
and the batched flushes, and nothing else.

Flags and measurements go through the control process (control/control_half.py) over the
live-state channel when there is no Redis (state/live_link.py); with Redis the data plane
reads flags from it and flushes measurements to it as `abgate proxy` does, and the channel
only carries what the control API asks (control/live_plane.py). Statistics (scipy), the
rollout controller and config parsing never run here: a reload arrives parsed.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from abgate.config import Config, ConfigError
from abgate.control.config_process import ParsedConfig, loads_config, parse_file
from abgate.control.flag_backend import (
    FlagBackend,
    initial_table,
    open_shared_state,
)
from abgate.control.history import attach_history, start_history
from abgate.control.live_plane import plane_requests, reload_plane
from abgate.control.wiring import new_registry, start_plane_flags
from abgate.proxy.metrics import ProxyMetrics
from abgate.proxy.runtime import DataPlane
from abgate.state.errors import StoreUnavailable
from abgate.state.flags import FlagTable, flag_to_json
from abgate.state.live_channel import Peer, RemoteError
from abgate.state.live_link import ChannelMeasurements, LiveStateLink
from abgate.state.redis_client import redis_settings
from abgate.state.redis_flag_sync import new_instance_id

if TYPE_CHECKING:
    from abgate.state.history.writer import HistoryWriter

log = logging.getLogger("abgate")
FIRST_SYNC_WAIT = 5.0  # then it routes with the config's and the state file's flags meanwhile


@dataclass(frozen=True, slots=True)
class PlaneHalf:
    proxy_url: str
    flags: FlagTable  # the table it routes with
    metrics: ProxyMetrics
    plane: DataPlane
    link: LiveStateLink
    history: HistoryWriter | None
    backend: FlagBackend | None  # with Redis: its flag sync
    measurements: ChannelMeasurements | None  # without Redis: the flushes' way out


@asynccontextmanager
async def data_plane_half(
    config: Config,
    channel: str | Path,
    *,
    config_digest: str | None = None,
    freeze: bool = False,
) -> AsyncIterator[PlaneHalf]:
    """Serve the proxy; connect to the control process at `channel`. On exit the listener
    drains, the last measurements go out, then the link closes. `config_digest` names the
    config file this process read (the control process sends its own if it differs).

    `freeze` (a process of its own): what exists once started, and after each reload, is
    moved out of the garbage collector's sight (`gc.freeze`): the config and the routing
    live as long as the process, and a full collection that walks a config of 24,000 routes
    holds the loop for ~45 ms."""
    flags = initial_table(config)
    metrics = ProxyMetrics()
    registry = new_registry(metrics)
    instance = new_instance_id()
    started = time.time()
    with_redis = redis_settings(config) is not None
    async with AsyncExitStack() as stack:
        shared = open_shared_state(stack, config, state_file=False) if with_redis else None
        history = await start_history(
            stack,
            config,
            instance=instance,
            table=None,
            maintenance=False,
            grace=config.proxy.shutdown_timeout,
        )  # before the plane: the plane drains first, then the last flush
        address: list[str] = []
        link = LiveStateLink(
            channel,
            flags,
            hello=lambda: {
                "instance": instance,
                "address": address[0],
                "pid": os.getpid(),
                "started_at": started,
                "config_digest": config_digest,
                "flags": [flag_to_json(flag) for flag in flags.all()],
            },
            flags=not with_redis,
        )
        stack.push_async_callback(link.__aexit__, None, None, None)  # after the last flush
        plane = await stack.enter_async_context(DataPlane(config, flags, metrics))
        address.append(plane.url)
        attach_history(history, plane, metrics, config)
        link.answer(plane_requests(plane, registry, history, freeze=freeze))
        link.on_config = lambda blob: reload_plane(plane, blob, freeze=freeze)
        await link.__aenter__()
        metrics.add_gauges(link.collect)
        backend, store = None, None
        if shared is not None:
            backend = await start_plane_flags(stack, config, flags, shared, plane, metrics)
        else:
            store = ChannelMeasurements(link)
            plane.flush_to(store)
        try:
            await asyncio.wait_for(link.synced.wait(), FIRST_SYNC_WAIT)
        except TimeoutError:
            log.warning(
                "control process not reached within %gs: routing with the config's and the "
                "state file's flags until it is",
                FIRST_SYNC_WAIT,
            )
        if freeze:
            gc.freeze()
        yield PlaneHalf(plane.url, flags, metrics, plane, link, history, backend, store)


async def read_config(path: str, channel: str | Path) -> ParsedConfig:
    """The config file, read at a (re)start. When the file is refused (edited into something
    invalid since the control process loaded it), the config the control process runs: a
    data plane that restarts must not stay down for a file that was never applied."""
    try:
        return parse_file(path)
    except ConfigError as refused:
        log.error("%s\ntaking the control process's config instead", refused.render())
        try:
            reader, writer = await asyncio.open_unix_connection(str(channel))
        except OSError:
            raise refused from None
        peer = Peer(reader, writer, name="the control process")
        serving = asyncio.create_task(peer.serve())
        try:
            answer = await peer.request("config", within=10.0)
        except (StoreUnavailable, RemoteError):
            raise refused from None
        finally:
            await peer.aclose()
            await serving
        blob = base64.b64decode(answer["config"])
        return ParsedConfig(loads_config(blob), blob, str(answer["digest"]))
