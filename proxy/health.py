"""Upstream health: active checks (GET a path every interval) and the per-upstream report
that /health/aggregate combines with the flag store's and the instances'."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from time import perf_counter

from abgate.config.model import HealthCheckConfig
from abgate.proxy.breaker import Breaker, BreakerState
from abgate.proxy.errors import UpstreamError
from abgate.proxy.pool import UpstreamPool

log = logging.getLogger("abgate.health")
ERROR_RATE_DEGRADED = 0.05

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
RANK = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


def worst(*statuses: str) -> str:
    return max(statuses, key=RANK.__getitem__, default=HEALTHY)


@dataclass
class CheckResult:
    ok: bool
    detail: str
    at: float


class ActiveCheck:
    """GET `path` on an upstream every `interval` (through its pool) and keep the result."""

    def __init__(self, pool: UpstreamPool, config: HealthCheckConfig, host: bytes) -> None:
        self.pool = pool
        self.config = config
        self._head = (
            f"GET {config.path} HTTP/1.1\r\n".encode()
            + b"Host: "
            + host
            + b"\r\nUser-Agent: abgate-health-check\r\n\r\n"
        )
        self.last: CheckResult | None = None

    async def run(self) -> None:
        while True:
            self.last = await self.check_once()
            await asyncio.sleep(self.config.interval)

    async def check_once(self) -> CheckResult:
        started = perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout):
                response = await self.pool.request(self._head, None)
                while await response.read():
                    pass
        except (UpstreamError, TimeoutError) as exc:
            detail = (
                exc.detail
                if isinstance(exc, UpstreamError)
                else f"no answer within {self.config.timeout:g}s"
            )
            if self.last is None or self.last.ok:
                log.warning("health check of %s failed: %s", self.pool.name, detail)
            return CheckResult(False, detail, time.time())
        ok = 200 <= response.status < 400
        detail = (
            f"GET {self.config.path}: {response.status} in "
            f"{(perf_counter() - started) * 1000:.1f} ms"
        )
        return CheckResult(ok, detail, time.time())


def upstream_health(
    breaker: Breaker,
    check: ActiveCheck | None,
    now: float,
) -> dict[str, object]:
    calls, failures = breaker.window(now)
    error_rate = failures / calls if calls else 0.0
    status, reasons = HEALTHY, []
    if breaker.state in (BreakerState.OPEN, BreakerState.FORCED_OPEN):
        status = UNHEALTHY
        reasons.append(f"breaker {breaker.state.label}: {breaker.reason}")
    elif breaker.state is BreakerState.HALF_OPEN:
        status = DEGRADED
        reasons.append("breaker half-open: trial calls in progress")
    if error_rate > ERROR_RATE_DEGRADED:
        status = worst(status, DEGRADED)
        reasons.append(f"error rate {error_rate:.1%} over the breaker window")
    if check is not None and check.last is not None and not check.last.ok:
        status = UNHEALTHY
        reasons.append(f"active check: {check.last.detail}")
    return {
        "status": status,
        "breaker": breaker.state.label,
        "error_rate": error_rate,
        "calls_in_window": calls,
        "active_check": None
        if check is None or check.last is None
        else {"ok": check.last.ok, "detail": check.last.detail, "at": check.last.at},
        "reasons": reasons,
    }
