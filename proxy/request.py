"""One client request and everything known about it, in one object (uvicorn's
`RequestResponseCycle` is the model): what the client sent, what the split and the breaker
decided, and how the answer went. The connection fills the first part as httptools parses;
the handler the rest; `ProxyHandler._finish` reads it once to build the outcome record.

The body arrives through `_feed`/`_end` (called by the connection) and is read with
`next_chunk`, each wait on the client bounded by client_body_timeout between two reads (the
connection's one timer judges it, as nginx's client_body_timeout bounds a pause, not the body).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, unquote_plus

from abgate.config.errors import AbgateError

if TYPE_CHECKING:
    from abgate.proxy.breaker import Breaker
    from abgate.proxy.destination import Destination, ExperimentRoute, Fallback, Routing
    from abgate.proxy.measure import PhaseTag

# Body bytes buffered from the client before its socket is paused (a slow upstream upload).
BODY_HIGH_WATER = 256 * 1024


class BodyTooLarge(AbgateError):
    """A request body over max_body_size (413)."""


class ClientGone(AbgateError):
    """The client closed or broke off its body before the end of it (400)."""


class ClientTooSlow(AbgateError):
    """No request body bytes within client_body_timeout (408, as nginx)."""


class ClientSide(Protocol):
    """The client connection a request came on (proxy/protocol.py's ClientConnection), as the
    request reads its body from it and the handler writes the answer to it. Declared here,
    where the request is, so that the connection can make requests without the two modules
    importing each other."""

    transport: asyncio.Transport | None

    def loop_time(self) -> float: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def write_continue(self) -> None: ...

    def watch_body(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def writelines(self, data: tuple[bytes, ...]) -> None: ...

    @property
    def write_paused(self) -> bool: ...

    async def drain(self) -> None: ...

    def done(self, request: ClientRequest, *, keep_alive: bool) -> None: ...

    def abort(self) -> None: ...


class ClientRequest:
    """A request from a client connection, from its head to the end of its answer."""

    __slots__ = (
        "_body",
        "_body_error",
        "_buffered",
        "_waiter",
        "answered_at",
        "body",
        "body_bytes",
        "body_done",
        "body_waiting",
        "client_id",
        "conn",
        "connection",
        "content_length",
        "dest",
        "draw",
        "error",
        "expect_continue",
        "fallback",
        "framing",
        "headers",
        "keep_alive",
        "last_body_at",
        "local",
        "method",
        "minor",
        "overhead",
        "phase",
        "remote",
        "request_id",
        "route",
        "routing",
        "started",
        "status",
        "streamed",
        "target",
        "ticket",
        "upstream_started",
        "uri",
        "validation",
        "values",
    )

    def __init__(
        self,
        conn: ClientSide | None,
        method: str,
        target: str,
        minor: int,
        headers: list[tuple[bytes, bytes]],
        *,
        keep_alive: bool = True,
        remote: str | None = None,
        started: float = 0.0,
    ) -> None:
        self.conn = conn
        self.method = method
        self.target = target  # the raw request-target, as the client sent it
        self.minor = minor  # HTTP/1.minor
        self.headers = headers  # raw (name, value) pairs, in order
        self.keep_alive = keep_alive
        self.remote = remote  # the client's address
        self.started = started  # perf_counter() when the head was complete
        self.content_length: int | None = None  # None: chunked, or no body
        self.client_id: bytes | None = None  # its X-Request-Id, as sent
        self.connection: bytes | None = None  # its Connection field, as sent
        self.expect_continue = False
        self.validation = False  # X-Test-Mode: validation (proxy/validation.py)
        # The body as it arrives.
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self.body_bytes = 0  # received so far
        self.body_done = False  # the whole body is in (or there is none)
        self.body_waiting = False  # a reader waits for the client (the body timer runs)
        self.last_body_at = 0.0  # loop time of the last body bytes (or the wait's start)
        self._body_error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        # What the request path decided, and how it went.
        self.routing: Routing | None = None  # the config it is handled with, read once
        self.request_id = ""
        self.uri = target  # the request-target forwarded (normalised, origin-form)
        self.body: bytes | None = None  # a buffered body, kept for a replay or a fallback
        self.framing: int | None = 0  # the body's length upstream; None: chunked
        self.streamed = False  # the body is streamed through: it cannot be sent twice
        self.route: ExperimentRoute | None = None
        self.dest: Destination | None = None
        self.draw = -1
        self.phase: PhaseTag | None = None  # the experiment's phase when its arm was chosen
        self.fallback: Fallback | None = None
        self.ticket: tuple[Breaker, int] | None = None  # a half-open trial to settle
        self.upstream_started: float | None = None  # when the current exchange began
        self.answered_at = 0.0  # when the upstream's answer (or failure) was in
        self.status = 0  # what the client got; 0 until its answer is on the way
        self.error = ""  # the upstream error kind, "" when none
        self.local = ""  # why abgate answered itself (a reason label), "" when it did not
        self.overhead: float | None = None  # seconds abgate added to an upstream's answer
        self.values: tuple[tuple[str, float], ...] = ()  # extra metrics read from the answer

    # -- what the split reads -------------------------------------------------------------

    def header(self, lower_name: bytes) -> bytes | None:
        """The first value of a header (its name given in lower case), or None."""
        for name, value in self.headers:
            if len(name) == len(lower_name) and name.lower() == lower_name:
                return value
        return None

    def header_text(self, lower_name: bytes) -> str | None:
        """A header's value as text (UTF-8, undecodable bytes kept as surrogates)."""
        value = self.header(lower_name)
        return None if value is None else value.decode("utf-8", "surrogateescape")

    def cookie(self, name: str) -> str | None:
        raw = self.header(b"cookie")
        if raw is None:
            return None
        for part in raw.decode("latin-1").split(";"):
            key, equals, value = part.strip().partition("=")
            if equals and key == name:
                return value.strip().strip('"')
        return None

    def query(self, name: str) -> str | None:
        _, question, query = self.target.partition("?")
        if not question:
            return None
        for part in query.split("#", 1)[0].split("&"):
            key, _, value = part.partition("=")
            if unquote_plus(key) == name:
                return unquote_plus(value)
        return None

    @property
    def path(self) -> str:
        """The decoded path (what routes match when the target needs no normalising)."""
        path = self.target.split("?", 1)[0]
        return unquote(path) if "%" in path else path

    # -- the body -------------------------------------------------------------------------

    def _feed(self, chunk: bytes) -> None:
        self._body.append(chunk)
        self._buffered += len(chunk)
        self.body_bytes += len(chunk)
        if self.conn is not None:
            self.last_body_at = self.conn.loop_time()
            if self._buffered > BODY_HIGH_WATER:
                self.conn.pause_reading()
        self._wake()

    def _end(self) -> None:
        self.body_done = True
        self._wake()

    def _fail_body(self, error: Exception) -> None:
        """The connection's verdict on a body still arriving: gone, or too slow."""
        if not self.body_done and self._body_error is None:
            self._body_error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_body(self) -> bytes:
        """Everything buffered so far, joined (the whole body once `body_done`)."""
        body = self._body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self.conn is not None:
            self.conn.resume_reading()
        return data

    async def next_chunk(self) -> bytes:
        """The next piece of the body; b"" at its end. Raises ClientGone or ClientTooSlow."""
        while True:
            if self._body:
                chunk = self._body.popleft()
                self._buffered -= len(chunk)
                if self.conn is not None and self._buffered < BODY_HIGH_WATER // 4:
                    self.conn.resume_reading()
                return chunk
            if self.body_done:
                return b""
            if self._body_error is not None:
                raise self._body_error
            conn = self.conn
            assert conn is not None
            if self.expect_continue:
                self.expect_continue = False
                conn.write_continue()
            self._waiter = asyncio.get_running_loop().create_future()
            self.body_waiting = True
            self.last_body_at = conn.loop_time()
            conn.watch_body()
            try:
                await self._waiter
            finally:
                self._waiter = None
                self.body_waiting = False
