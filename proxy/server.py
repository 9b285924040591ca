"""The data-plane listener, with its lifecycle made explicit: start (bind, optionally
SO_REUSEPORT so several workers share a port) -> serve -> on exit: stop accepting, let
in-flight requests finish for up to `shutdown_timeout`, then close. Its connections speak
abgate's own protocol (proxy/protocol.py: the client limits live there).

Also here: the open-file check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from types import TracebackType

from abgate.config.model import Listen, ProxySettings
from abgate.proxy.handler import ProxyHandler
from abgate.proxy.protocol import ClientConnection, ClientLimits, ServerState

log = logging.getLogger("abgate.proxy")


def check_file_limit(needed: int) -> None:
    """Raise the soft limit on open files towards `needed` (up to the hard limit); warn when
    it stays below, since past it new clients are closed without an answer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < needed:
        log.warning(
            "the open-file limit is %d, below the %d that max_connections and the "
            "upstream pools may need: raise it (ulimit -n) or lower them",
            soft,
            needed,
        )


class HttpListener:
    """One listening socket serving the request path with abgate's own protocol
    (proxy/protocol.py) on the running loop (uvloop in every abgate process)."""

    def __init__(
        self,
        handler: ProxyHandler,
        listen: Listen,
        settings: ProxySettings,
        *,
        reuse_port: bool = False,
    ) -> None:
        self._handler = handler
        self._listen = listen
        self._settings = settings
        self._reuse_port = reuse_port
        self._server: asyncio.Server | None = None
        self.port = listen.port
        self.limits = ClientLimits(
            settings.client_header_timeout,
            settings.client_keepalive_timeout,
            settings.client_body_timeout,
            settings.max_header_size,
            settings.max_connections,
        )
        self._state = ServerState(self.limits, handler.start)

    async def __aenter__(self) -> HttpListener:
        loop = asyncio.get_running_loop()
        state = self._state
        self._server = await loop.create_server(
            lambda: ClientConnection(state),
            self._listen.host,
            self._listen.port,
            reuse_port=self._reuse_port or None,
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return Listen(self._listen.host, self.port).url

    @property
    def malformed(self) -> int:
        """Requests answered 400 as malformed by the protocol itself."""
        return self.limits.malformed

    @property
    def connections(self) -> int:
        return len(self._state.connections)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop accepting; let requests in flight finish for up to shutdown_timeout (idle
        connections close now, busy ones after their answer); then cut what is left."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        state = self._state
        state.closing = True
        for conn in list(state.connections):
            conn.close_when_idle()
        if state.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.shutdown_timeout):
                    await state.emptied.wait()
        for conn in list(state.connections):
            conn.abort()
        await self._handler.aclose()
        await server.wait_closed()
