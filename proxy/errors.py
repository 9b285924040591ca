"""The proxy's error set, mapped from socket and parser errors at the upstream boundary.

UpstreamError            -> 502 unless stated
├── UpstreamConnectError     refused, unreachable, connect timeout
├── UpstreamClosed           the connection ended before the response was whole
├── UpstreamProtocolError    the upstream's response could not be parsed
└── UpstreamTimeout      -> 504: no response head, or no body byte, within read_timeout;
PoolTimeout              -> 503: no pooled connection within connect_timeout; abgate's own
                             congestion, not the upstream's failure (no breaker; a treatment
                             call falls back to control where a fallback may be sent)
"""

from __future__ import annotations

from abgate.config.errors import AbgateError


class UpstreamError(AbgateError):
    kind = "error"  # the `kind` label of abgate_upstream_errors_total
    status = 502
    congestion = False  # abgate's own limit, not a failure of the upstream

    def __init__(self, upstream: str, detail: str) -> None:
        super().__init__(f"{upstream}: {detail}")
        self.upstream = upstream
        self.detail = detail


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamClosed(UpstreamError):
    kind = "closed"

    def __init__(self, upstream: str, detail: str, *, nothing_received: bool) -> None:
        super().__init__(upstream, detail)
        # True when not one byte of the response arrived: the request may be replayed on a
        # fresh connection (the classic race with an upstream closing an idle keep-alive).
        self.nothing_received = nothing_received


class UpstreamProtocolError(UpstreamError):
    kind = "protocol"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"
    status = 504


class PoolTimeout(UpstreamError):
    kind = "pool_timeout"
    status = 503
    congestion = True
