"""The data plane's HTTP/1.1 server side: one asyncio Protocol per client connection, parsing
with httptools callbacks (as uvicorn's httptools_impl does), filling one `ClientRequest` per
request and handing it to the request path when its head is complete.

What a hostile or broken client can hold is bounded here, with nginx's defaults and one timer
per connection (never per request): a request head must arrive within client_header_timeout
of its first byte (408) and be at most max_header_size bytes and MAX_FIELDS fields (431); an
idle keep-alive connection closes after client_keepalive_timeout; a body may pause at most
client_body_timeout between two reads (408); beyond max_connections a new client gets a 503.
Every refusal answers, half-closes and reads what still comes for LINGER seconds before the
close, so that no reset makes the client's kernel drop the answer unread.

Requests pipelined behind one in progress wait in order (reading pauses meanwhile); an answer
given before its request body was read closes the connection after it (lingering).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import cast

import httptools
import orjson

from abgate.proxy.flow import WriteFlow
from abgate.proxy.request import ClientGone, ClientRequest, ClientTooSlow

log = logging.getLogger("abgate.proxy")
LINGER = 2.0  # seconds a refused client's bytes are read and dropped before the close
MAX_FIELDS = 100  # header fields in one request head (Envoy's max_headers_count)
_REASON = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Connection states, for the one timer.
IDLE, HEAD, BUSY = 0, 1, 2


@dataclass(slots=True)
class ClientLimits:
    """The listener's bounds and what they refused (read by the metrics collector)."""

    header_timeout: float
    keepalive_timeout: float
    body_timeout: float
    max_header_size: int
    max_connections: int
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count
    logged: set[str] = field(default_factory=set)  # reasons logged since a quiet moment
    malformed: int = 0  # requests refused as malformed (400)

    def refuse(self, reason: str, detail: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if reason not in self.logged:
            self.logged.add(reason)
            log.warning(
                "refusing clients: %s (counted in abgate_client_refusals_total; "
                "logged once until it stops)",
                detail,
            )


def error_answer(status: int, error: str) -> bytes:
    """abgate's small JSON error, closing the connection (the client's limits, malformed)."""
    body = orjson.dumps({"error": error, "upstream": None, "request_id": None})
    return (
        f"HTTP/1.1 {status} {_REASON[status]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


RequestStarter = Callable[[ClientRequest], None]


@dataclass(slots=True)
class ServerState:
    """What the listener's connections share: the limits, the request path's entry point,
    and the open connections (for the cap and the drain on shutdown)."""

    limits: ClientLimits
    start: RequestStarter
    connections: set[ClientConnection] = field(default_factory=set)
    closing: bool = False
    emptied: asyncio.Event = field(default_factory=asyncio.Event)  # closing, and none left

    def forget(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if self.closing and not self.connections:
            self.emptied.set()


class ClientConnection(asyncio.Protocol):
    """One client connection: parse, bound, queue pipelined requests, write answers."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._limits = state.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        # The request being parsed, the one being answered, and those waiting in between.
        self._parsing: ClientRequest | None = None
        self._active: ClientRequest | None = None
        self._queue: deque[ClientRequest] = deque()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0  # of the head being parsed, field by field
        self._state_now = HEAD  # a client that connects owes us a head
        self._since = 0.0  # loop time the current state's clock started
        self._head_bytes = 0  # bytes read while the head was incomplete (a bound)
        self._timer: asyncio.TimerHandle | None = None
        self._discarding = False  # refused: lingering before the close
        self._reading_paused = False
        self._flow = WriteFlow()
        self._upgraded = False
        self._eof = False
        self._line: bytes | None = None  # a request line being looked at (see _request_line)
        self._begun = False  # a request's first bytes were parsed, not yet its end
        self._deferred: bool | None = None  # an answer's keep-alive, once the client reads it

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        state, limits = self._state, self._limits
        if len(state.connections) >= limits.max_connections or state.closing:
            limits.refuse(
                "max_connections",
                f"{limits.max_connections} client connections open (proxy.max_connections)",
            )
            self._refuse(503, f"over {limits.max_connections} client connections")
            return
        if len(state.connections) < limits.max_connections // 2:
            limits.logged.discard("max_connections")  # quiet again: log the next burst
        state.connections.add(self)
        self._since = self._loop.time()
        self._arm(self._since + limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        for request in (self._active, *self._queue, self._parsing):
            if request is not None:
                request._fail_body(ClientGone())
        self._queue.clear()
        self._flow.resume()  # a writer waiting on the client goes on, and finds it gone

    def eof_received(self) -> bool:
        # The client half-closed: a request in progress may still be answered, then close.
        self._eof = True
        if self._parsing is not None:  # its body can no longer come
            self._parsing._fail_body(ClientGone())
        return (self._active is not None or bool(self._queue)) and not self._discarding

    def data_received(self, data: bytes) -> None:
        if self._discarding or self._upgraded:
            return  # refused (or switched away from HTTP): reading only to avoid a reset
        if self._parsing is None:  # these bytes begin or continue a request head
            if self._state_now == IDLE:
                self._state_now, self._since = HEAD, self._loop.time()
            self._head_bytes += len(data)
            if not self._begun:
                self._line = b""  # these bytes begin a request: look at its line
            if self._line is not None and not self._request_line(data):
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded = True  # answered as a plain request, then closed
            self._dispatch()
            return
        except httptools.HttpParserError as exc:
            self._malformed(exc)
            return
        # Still inside a head after these bytes: all of them were head. (A head that ended
        # in them was judged by its own size in on_headers_complete.)
        if self._parsing is None and self._head_bytes > self._limits.max_header_size:
            self._too_large(f"request head over {self._limits.max_header_size} bytes")
            return
        self._dispatch()

    def _request_line(self, data: bytes) -> bool:
        """HTTP/0.9 (`GET /x` and no version) would have llhttp wait for a head that never
        comes: the request line is looked at once, and refused at once (505)."""
        line = self._line
        assert line is not None
        end = data.find(b"\n")
        if end < 0:
            if len(line) < 8192:
                self._line = line + data
            return True
        line = (line + data[:end]) if line else data[:end]
        self._line = None
        if b" HTTP/" in line:
            return True  # a version: llhttp judges the rest
        line = line.strip()
        method, space, target = line.partition(b" ")
        if space and method.isalpha() and method.isupper() and b" " not in target:
            self._refuse(505, "HTTP/0.9 is not supported")  # `GET /x`: no version
            return False
        return True

    def pause_writing(self) -> None:
        self._flow.pause()

    def resume_writing(self) -> None:
        self._flow.resume()
        deferred, self._deferred = self._deferred, None
        if deferred is not None and self._active is not None:
            self._next(self._active, deferred)

    # -- httptools callbacks --------------------------------------------------------------

    # No on_message_begin: one Python call fewer per request. The first on_url marks a
    # request begun; on_headers_complete hands the head over and clears it for the next.

    def on_url(self, url: bytes) -> None:
        self._begun = True
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        parser, limits = self._parser, self._limits
        if self._head_size > limits.max_header_size:
            self._too_large(f"request head over {limits.max_header_size} bytes")
            raise _Refused
        if len(self._headers) > MAX_FIELDS:
            self._too_large(f"over {MAX_FIELDS} header fields")
            raise _Refused
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            # HTTP/0.9 has no status line to carry an answer; 2.0 is not spoken over this.
            self._refuse(505, f"HTTP/{version} is not supported")
            raise _Refused
        request = ClientRequest(
            self,
            parser.get_method().decode("latin-1"),
            self._url.decode("latin-1"),
            1 if version == "1.1" else 0,
            self._headers,
            keep_alive=parser.should_keep_alive(),
            remote=self.remote,
            started=perf_counter(),
        )
        hosts = 0
        for name, value in self._headers:  # the fields abgate itself reads, in one pass
            size = len(name)
            if size == 4 and name.lower() == b"host":
                hosts += 1
            elif size == 14 and name.lower() == b"content-length":
                request.content_length = int(value)
            elif size == 12 and name.lower() == b"x-request-id":
                request.client_id = value
            elif size == 10 and name.lower() == b"connection":
                request.connection = value
            elif size == 6 and name.lower() == b"expect":
                request.expect_continue = value.lower() == b"100-continue"
            elif size == 11 and name.lower() == b"x-test-mode":
                request.validation = value == b"validation"
        if hosts > 1 or (hosts == 0 and request.minor == 1):
            # RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host (nginx answers 400 too).
            self._limits.malformed += 1
            self._refuse(400, "an HTTP/1.1 request needs exactly one Host header")
            raise _Refused
        self._parsing = request
        self._queue.append(request)
        self._state_now = BUSY
        self._head_bytes = self._head_size = 0
        self._url, self._headers = b"", []

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is not None:
            request._feed(body)

    def on_message_complete(self) -> None:
        self._begun = False
        request = self._parsing
        if request is not None:
            self._parsing = None
            request._end()

    # -- the request path's side ----------------------------------------------------------

    def loop_time(self) -> float:
        return self._loop.time()

    def _dispatch(self) -> None:
        """Start the next request once the one before it is answered."""
        if self._active is None and self._queue:
            request = self._active = self._queue.popleft()
            if self._queue:
                self.pause_reading()  # pipelined: the rest waits its turn
            self._state.start(request)

    def _dispatch_resume(self) -> None:
        self._dispatch()
        if not self._queue:
            self.resume_reading()

    def write_continue(self) -> None:
        if self.transport is not None:
            self.transport.write(_CONTINUE)

    def watch_body(self) -> None:
        """A reader waits for body bytes: make sure the timer will judge the pause."""
        self._arm_by(self._loop.time() + self._limits.body_timeout)

    def _arm_by(self, deadline: float) -> None:
        """The one timer fires by `deadline` (sooner if it was armed sooner)."""
        timer = self._timer
        if timer is None:
            self._arm(deadline)
        elif timer.when() > deadline:
            timer.cancel()
            self._arm(deadline)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(data)

    def writelines(self, data: tuple[bytes, ...]) -> None:
        transport = self.transport
        if transport is not None:
            transport.writelines(data)

    @property
    def write_paused(self) -> bool:
        return self._flow.paused

    async def drain(self) -> None:
        """Wait until the client has read enough of what was written (or is gone)."""
        await self._flow.drain()
        if self.transport is None:
            raise ClientGone

    def done(self, request: ClientRequest, *, keep_alive: bool) -> None:
        """`request` is answered (its answer written): next request, idle, or close."""
        if request is not self._active:
            return
        if self._flow.paused and self.transport is not None:
            self._deferred = keep_alive  # the client is not reading: no next request yet
            return
        self._next(request, keep_alive)

    def _next(self, request: ClientRequest, keep_alive: bool) -> None:
        self._active = None
        transport = self.transport
        if transport is None:
            return
        if not request.body_done:
            # Answered before its body was read: no next request can follow on this
            # connection; linger so that the unread body does not turn into a reset.
            self._linger()
            return
        if not keep_alive or self._upgraded or self._eof or self._state.closing:
            transport.close()
            return
        if self._queue:
            # Pipelined: the next one starts from the loop, not from inside this answer.
            self._loop.call_soon(self._dispatch_resume)
            return
        if self._parsing is None:
            self.resume_reading()
            now = self._loop.time()
            if self._head_bytes:  # the next head began arriving meanwhile
                self._state_now, self._since = HEAD, now
                deadline = now + self._limits.header_timeout
            else:
                self._state_now, self._since = IDLE, now
                deadline = now + self._limits.keepalive_timeout
            self._arm_by(deadline)

    def abort(self) -> None:
        """Cut the connection (an answer broke off after its head went out)."""
        if self.transport is not None:
            self.transport.abort()

    def close_when_idle(self) -> None:
        """Shutdown: close now if nothing is in progress, else after the current answer."""
        if self._active is None and not self._queue and self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._queue:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- limits ---------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        """One timer per connection: it fires at the earliest moment a limit could be
        reached, judges the state the connection is in, and re-arms for the next."""
        self._timer = None
        if self.transport is None or self._discarding:
            return
        now, limits = self._loop.time(), self._limits
        request = self._active
        if request is not None and request.body_waiting:
            deadline = request.last_body_at + limits.body_timeout
            if now >= deadline:
                request._fail_body(ClientTooSlow())
                return
            self._arm(deadline)
        elif self._state_now == HEAD:
            deadline = self._since + limits.header_timeout
            if now >= deadline:
                limits.refuse(
                    "header_timeout",
                    f"request heads not complete within {limits.header_timeout:g}s",
                )
                self._refuse(408, f"no complete request head within {limits.header_timeout:g}s")
                return
            self._arm(deadline)
        elif self._state_now == IDLE:
            deadline = self._since + limits.keepalive_timeout
            if now >= deadline:
                self.transport.close()
                return
            self._arm(deadline)
        # BUSY with nobody waiting on the client: the upstream's timers govern; the timer
        # is armed again when the connection goes idle or a reader waits for the body.

    def _too_large(self, detail: str) -> None:
        self._limits.refuse("header_too_large", detail)
        self._refuse(431, detail)

    def _malformed(self, exc: Exception) -> None:
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"malformed request: {what}" if what else "malformed request"
        if self._discarding:
            return  # refused from a callback already (raised _Refused)
        self._limits.malformed += 1
        log.info("%s from %s", error, self.remote)
        self._refuse(400, error)

    def _refuse(self, status: int, error: str) -> None:
        """Answer and close, lingering as nginx does: closing at once while the client still
        sends would reset the connection, and a reset can make its kernel drop our answer
        unread. So: answer, half-close, discard what still comes for LINGER seconds."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._discarding:
            return
        transport.write(error_answer(status, error))
        self._linger()

    def _linger(self) -> None:
        transport = self.transport
        if transport is None or self._discarding:
            return
        self._discarding = True
        self._state.forget(self)
        self.resume_reading_for_linger()
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except OSError:  # the client is gone already
            transport.abort()
            return
        self._loop.call_later(LINGER, transport.close)

    def resume_reading_for_linger(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request already answered."""
