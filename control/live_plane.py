"""What the control API asks of `abgate run`'s data plane, a process of its own, over the
live-state channel (state/live_channel.py): both ends.

`plane_requests` are the data plane's handlers (run in its process, each a few
microseconds of its loop but `metrics`, which renders its exposition as a scrape always
did, and `reload`, which swaps in a config parsed elsewhere); `RemotePlane` is how the
control API calls them. The control API's /metrics is its own families and the data
plane's in one exposition (`merged`); `process_*` are the data plane's, the control
process's own are `abgate_control_process_*`.
"""

from __future__ import annotations

import base64
import gc
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from abgate.config import Config
from abgate.control.config_process import loads_config_gradually
from abgate.proxy.admin import REGISTRY
from abgate.proxy.breaker import BreakerState
from abgate.proxy.runtime import DataPlane
from abgate.state.errors import StoreUnavailable
from abgate.state.live_channel import RequestHandler
from abgate.state.live_server import LiveStateServer

if TYPE_CHECKING:
    from abgate.state.history.writer import HistoryWriter

FORCED = {
    "forced_open": BreakerState.FORCED_OPEN,
    "forced_closed": BreakerState.FORCED_CLOSED,
    "auto": None,
}
RELOAD_TIMEOUT = 60.0  # a large config's routing is rebuilt there; pools close


def plane_requests(
    plane: DataPlane,
    registry: CollectorRegistry,
    history: HistoryWriter | None,
    *,
    freeze: bool = False,
) -> dict[str, RequestHandler]:
    """The data plane's answers to its control process (`freeze`: see reload_plane)."""

    async def status(_: dict[str, Any]) -> dict[str, Any]:
        return {"applied": plane.flags.versions(), "breakers": plane.breaker_states()}

    async def breakers(_: dict[str, Any]) -> list[dict[str, object]]:
        return plane.breaker_snapshots()

    async def force_breaker(message: dict[str, Any]) -> dict[str, object]:
        return plane.force_breaker(str(message["upstream"]), FORCED[str(message["state"])])

    async def shadow_stats(_: dict[str, Any]) -> list[dict[str, object]]:
        return plane.shadow_stats()

    async def health(_: dict[str, Any]) -> dict[str, dict[str, object]]:
        return plane.health()

    async def latency(_: dict[str, Any]) -> dict[str, dict[str, list[int]]]:
        return plane.metrics.latency_counts()

    async def metrics(_: dict[str, Any]) -> str:
        return generate_latest(registry).decode()

    async def reload(message: dict[str, Any]) -> list[str]:
        return await reload_plane(plane, base64.b64decode(message["config"]), freeze=freeze)

    async def flush_history(_: dict[str, Any]) -> None:
        if history is not None:
            await history.flush()

    async def history_status(_: dict[str, Any]) -> dict[str, Any] | None:
        return None if history is None else history_report(history)

    return {
        "status": status,
        "breakers": breakers,
        "force_breaker": force_breaker,
        "shadow_stats": shadow_stats,
        "health": health,
        "metrics": metrics,
        "latency": latency,
        "reload": reload,
        "flush_history": flush_history,
        "history": history_status,
    }


def history_report(writer: HistoryWriter) -> dict[str, Any]:
    """A history writer's state, as /health/aggregate shows it."""
    return {
        "connected": writer.connected,
        "buffered": writer.buffered,
        "dropped": writer.dropped,
        "written": writer.written,
        "layout": writer.layout,
        "last_error": writer.last_error,
    }


async def reload_plane(plane: DataPlane, blob: bytes, *, freeze: bool = False) -> list[str]:
    """A config parsed and validated elsewhere, swapped in; what could not apply live.
    `freeze`: the new config out of the garbage collector's sight (see data_plane_half)."""
    warnings = await plane.reload_in_steps(await loads_config_gradually(blob))
    await plane.close_retired_pools()
    if freeze:
        gc.freeze()
    return warnings


class RemotePlane:
    """The control API's data plane: each call one request over the channel;
    StoreUnavailable (503) while the data plane is away, KeyError for an unknown name."""

    def __init__(self, server: LiveStateServer, config: Config) -> None:
        self._server = server
        self.config = config  # the data plane's, as this process last sent it

    @property
    def heartbeat_interval(self) -> float:
        return self.config.flags.heartbeat_interval

    @property
    def connected(self) -> bool:
        return bool(self._server.planes)

    async def breaker_snapshots(self) -> list[dict[str, object]]:
        result: list[dict[str, object]] = await self._server.ask("breakers")
        return result

    async def force_breaker(self, upstream: str, state: str) -> dict[str, object]:
        result: dict[str, object] = await self._server.ask(
            "force_breaker", upstream=upstream, state=state
        )
        return result

    async def shadow_stats(self) -> list[dict[str, object]]:
        result: list[dict[str, object]] = await self._server.ask("shadow_stats")
        return result

    async def health(self) -> dict[str, dict[str, object]]:
        result: dict[str, dict[str, object]] = await self._server.ask("health")
        return result

    async def flush_history(self) -> None:
        await self._server.ask("flush_history")

    async def history(self) -> dict[str, Any] | None:
        """The data plane's history writer, as `history_report` says it."""
        result: dict[str, Any] | None = await self._server.ask("history")
        return result

    async def latency_counts(self) -> dict[str, dict[str, list[int]]]:
        """Each experiment arm's latency histogram counts (proxy/metrics.py)."""
        result: dict[str, dict[str, list[int]]] = await self._server.ask("latency", within=2.0)
        return result

    async def exposition(self) -> str:
        result: str = await self._server.ask("metrics")
        return result

    async def reload(self, blob: bytes) -> list[str]:
        """Every connected data plane takes the config; a warning when none is connected
        (it is sent the config when it comes back)."""
        if not self._server.planes:
            return ["the data plane is not connected: it takes this config when it reconnects"]
        warnings: list[str] = []
        for link in list(self._server.planes):
            answer = await link.peer.request(
                "reload", within=RELOAD_TIMEOUT, config=base64.b64encode(blob).decode()
            )
            warnings += [str(warning) for warning in answer if warning not in warnings]
        return warnings


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merged(own: list[Metric], plane: list[Metric]) -> list[Metric]:
    """Both processes' families as one process would report them. A family both export
    (with Redis the flag store's, with PostgreSQL the history writer's) is combined sample
    by sample: counters and histograms add up, a `*_connected` gauge takes the lower value
    (down if either is), an age the higher, other gauges add up (what is buffered)."""
    theirs = {family.name: family for family in plane}
    out = []
    for family in own:
        other = theirs.pop(family.name, None)
        out.append(family if other is None else _combined(family, other))
    return out + list(theirs.values())


def _combined(one: Metric, other: Metric) -> Metric:
    pick: Callable[[float, float], float] = _add
    if one.type == "gauge" and one.name.endswith("_connected"):
        pick = _lower
    elif one.type == "gauge" and one.name.endswith(("_age_seconds", "_timestamp_seconds")):
        pick = _higher
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in (*one.samples, *other.samples):
        key = (sample.name, tuple(sorted(sample.labels.items())))
        values[key] = pick(values[key], sample.value) if key in values else sample.value
    family = Metric(one.name, one.documentation, one.type, one.unit)
    for (name, labels), value in values.items():
        family.add_sample(name, dict(labels), value)
    return family


def _add(a: float, b: float) -> float:
    return a + b


def _lower(a: float, b: float) -> float:
    return min(a, b)


def _higher(a: float, b: float) -> float:
    return max(a, b)


PLANE = web.AppKey("plane", RemotePlane)


async def metrics_with_plane(request: web.Request) -> web.Response:
    """GET /metrics of `abgate run`'s control API: its families and the data plane's."""
    own = list(request.app[REGISTRY].collect())
    try:
        text = await request.app[PLANE].exposition()
    except StoreUnavailable:
        plane: list[Metric] = []  # away (restarting): its families return with it
    else:
        plane = list(text_string_to_metric_families(text))
    body = generate_latest(_Families(merged(own, plane)))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
