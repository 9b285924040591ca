"""One keep-alive HTTP/1.1 connection to an upstream: an asyncio Protocol driving llhttp.

Why not aiohttp's ClientSession: a proxy on it spent most of its time in the client (request and
response objects, cookie jar, header multidicts, decompression checks). This client does only
what a reverse proxy needs: write a prepared head and a body (bytes or a stream, with
back-pressure), parse the response with httptools, hand the head over as soon as it is parsed
and the body as it arrives (pausing the socket when the client reads slowly), and tell the pool
whether the connection can be reused.

One exchange at a time per connection. Timeouts are one timer per connection that re-arms
itself from the time of the last activity, so data arriving costs a float store, not a timer.
What counts as activity is chosen so that each side is timed for what it does: the response
head must arrive within read_timeout of the request being sent (its bytes do not extend the
wait), each body read within read_timeout of the last; while we wait on the client (a slow
upload, a slow reader) the upstream is not the one being slow. An optional response_timeout
bounds the whole exchange.

The pool is told exactly once when a connection is gone, whatever ended it (see `_gone`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import cast

import httptools

from abgate.config.model import UpstreamConfig
from abgate.proxy.errors import (
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from abgate.proxy.flow import WriteFlow
from abgate.proxy.upstream_response import UpstreamResponse

__all__ = ["HeadCallback", "UpstreamConnection", "UpstreamResponse"]

Releaser = Callable[["UpstreamConnection", bool], None]
# Told once per exchange: the response once its head is parsed, or why there is none.
HeadCallback = Callable[["UpstreamResponse | None", "UpstreamError | None"], None]


class UpstreamConnection(asyncio.Protocol):
    """A pooled connection; `exchange` runs one request/response on it."""

    def __init__(self, config: UpstreamConfig, release: Releaser) -> None:
        self.upstream = config.name
        self.read_timeout = config.read_timeout
        self._response_timeout = config.response_timeout
        self._max_head = config.max_response_header_size
        self.uses = 0
        self.idle_since = 0.0
        self.closed = False
        self._release = release
        self._gone_reported = False
        self._deadline = float("inf")  # of the whole exchange (response_timeout)
        self._head_bytes = 0  # bytes read while the head was incomplete (a bound, not a size)
        self._head_size = 0  # the head's own fields, counted as parsed
        self._head_done = False  # the final head is parsed: later header callbacks are trailers
        self._awaiting_client = False  # streaming a request body, waiting for its next chunk
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: UpstreamResponse | None = None
        self._on_head: HeadCallback | None = None  # until the head is handed over
        self._ready: UpstreamResponse | None = None  # head parsed, handed over after the read
        self._received = False
        self._request_sent = False
        self._head_only = False
        self._until_eof = False
        self._framed = False
        self._informational = False
        self._reading_paused = False
        self._flow = WriteFlow()
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0

    # -- exchange -------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        transport = self._transport
        return not self.closed and transport is not None and not transport.is_closing()

    def _begin(self, head_only: bool, on_head: HeadCallback) -> asyncio.Transport:
        transport = self._transport
        assert transport is not None
        assert self._response is None
        self._response = UpstreamResponse(self)
        self._on_head = on_head
        self._received = self._request_sent = self._until_eof = self._framed = False
        self._head_done = False
        self._head_bytes = self._head_size = 0
        self._head_only = head_only
        self._touch()
        if self._response_timeout is not None:
            self._deadline = self._last_activity + self._response_timeout
            if self._timer is not None and self._timer.when() > self._deadline:
                self._cancel_timer()  # armed for a later moment by an earlier exchange
        self._arm_timer()
        return transport

    def send(
        self, head: bytes, body: bytes | None, *, head_only: bool, on_head: HeadCallback
    ) -> None:
        """Send a request whose body is in memory, without waiting: `on_head` is called
        once, later, with the response when its head is parsed (and what of its body came
        in the same reads), or with the error that ended the exchange."""
        transport = self._begin(head_only, on_head)
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        self._request_sent = True

    async def exchange(
        self,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        *,
        head_only: bool = False,
        chunked: bool = False,
    ) -> UpstreamResponse:
        """Send a request; return once the response head is parsed.

        `body` is bytes (sent with the head), an async iterator (streamed; `chunked` frames it),
        or None. If the exchange does not complete, the connection is closed, never reused.
        """
        future: asyncio.Future[UpstreamResponse] = self._loop.create_future()

        def settle(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    assert response is not None
                    future.set_result(response)

        transport = self._begin(head_only, settle)
        try:
            if body is None or isinstance(body, bytes):
                if body:
                    transport.writelines((head, body))
                else:
                    transport.write(head)
                self._request_sent = True
            else:
                transport.write(head)
                await self._stream_body(body, chunked, future)
            return await future
        except BaseException:
            self.abort()
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: the caller has the error that matters
            raise

    async def _stream_body(
        self, body: AsyncIterator[bytes], chunked: bool, head: asyncio.Future[UpstreamResponse]
    ) -> None:
        """Send the body as the client sends it; stop if the upstream answers (or fails)
        before taking all of it."""
        chunks = aiter(body)
        while True:
            self._awaiting_client = True  # the upstream's timer does not run on the client
            try:
                chunk = await anext(chunks, None)
            finally:
                self._awaiting_client = False
            if chunk is None:
                break
            if head.done() or not self.usable:
                return  # the upstream answered (or failed) before taking the whole body
            if not chunk:
                continue
            assert self._transport is not None
            if chunked:
                self._transport.writelines((f"{len(chunk):x}\r\n".encode(), chunk, b"\r\n"))
            else:
                self._transport.write(chunk)
            self._touch()
            if self._flow.paused:
                await self._flow.drain()
        if chunked and self.usable:
            assert self._transport is not None
            self._transport.write(b"0\r\n\r\n")
        self._request_sent = True
        self._touch()  # the wait for the head starts now

    def abort(self) -> None:
        """Drop the connection: the exchange on it is not going to complete."""
        if self.closed:
            return
        self._fail(UpstreamClosed(self.upstream, "exchange abandoned", nothing_received=False))

    def abandon(self, response: UpstreamResponse) -> None:
        """The reader of `response` gave up on it (the client went away): drop the connection
        if it is still carrying that response, so no half-read body is left on a pooled socket."""
        if self._response is response:
            self.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self.closed = True
        self._cancel_timer()
        self._gone()

    def _gone(self) -> None:
        """Tell the pool, exactly once, that this connection no longer counts."""
        if not self._gone_reported:
            self._gone_reported = True
            self._release(self, False)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._response is None:
            # Bytes while idle: the upstream is out of step with us. Never reuse this connection.
            self._close_dead()
            return
        self._received = True
        in_head = not self._head_done
        if in_head:
            self._head_bytes += len(data)  # bounds what a head still arriving may hold
        else:
            self._last_activity = self._loop.time()  # body progress; head bytes do not count
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__cause__ or exc.__context__
            self._fail(
                cause
                if isinstance(cause, UpstreamError)
                else UpstreamProtocolError(self.upstream, str(exc))
            )
            return
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(self.upstream, f"malformed response: {exc}"))
            return
        # Still no end of the head after these bytes: all of them were head. (When the head
        # ended in them, the rest was body: its own size was judged in on_headers_complete.)
        if in_head and not self._head_done and self._head_bytes > self._max_head:
            self._head_too_large()
        elif self._ready is not None:
            self._hand_over()

    def _hand_over(self) -> None:
        """The head is parsed and this read's body bytes with it: hand the response over."""
        response, self._ready = self._ready, None
        callback, self._on_head = self._on_head, None
        if callback is not None:
            callback(response, None)

    def _head_too_large(self) -> None:
        self._fail(
            UpstreamProtocolError(self.upstream, f"response head over {self._max_head} bytes")
        )

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost does the bookkeeping

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self._flow.resume()
        response = self._response
        if response is not None:
            if self._until_eof and self._head_done:
                # A body delimited by the end of the connection ends here, complete.
                self._response = None
                response._finish()
            else:
                detail = f"connection closed: {exc}" if exc else "connection closed by upstream"
                self._fail(
                    UpstreamClosed(self.upstream, detail, nothing_received=not self._received)
                )
        self._gone()
        if self._ready is not None:
            self._hand_over()

    def pause_writing(self) -> None:
        self._flow.pause()

    def resume_writing(self) -> None:
        self._flow.resume()

    def pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._touch()
            self._transport.resume_reading()

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a chunked trailer: not merged into the head that went out already
        assert self._response is not None
        self._response.headers.append((name, value))
        self._head_size += len(name) + len(value) + 4  # name: value CRLF
        lower = name.lower()
        if lower == b"content-length" or lower == b"transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if self._head_size > self._max_head:
            raise UpstreamProtocolError(self.upstream, f"response head over {self._max_head} bytes")
        if status < 100:
            raise UpstreamProtocolError(self.upstream, f"invalid status code {status:03d}")
        if status < 200:
            # 1xx (103 Early Hints, a stray 100 Continue): skip to the final response. 101 would
            # switch protocols, which abgate does not proxy (it strips Upgrade).
            if status == 101:
                raise UpstreamProtocolError(self.upstream, "unexpected 101 Switching Protocols")
            self._informational = True
            response.headers.clear()
            self._head_size = 0
            self._framed = False
            return
        if status > 599:
            raise UpstreamProtocolError(self.upstream, f"invalid status code {status}")
        response.status = status
        self._head_done = True
        self._touch()  # from here on, read_timeout is between body reads
        self._ready = response  # handed over once this read is parsed
        if self._head_only:
            self._complete(reusable=False)  # llhttp would wait for a HEAD "body": do not reuse
            return
        self._until_eof = not self._framed and status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._response is not None:
            self._complete(reusable=self._parser.should_keep_alive() and self._request_sent)

    # -- internals ------------------------------------------------------------------------

    def _complete(self, *, reusable: bool) -> None:
        response = self._response
        assert response is not None
        self._response = None
        # The timer stays armed: back-to-back exchanges reuse it (see _on_timer).
        self.uses += 1
        self._deadline = float("inf")
        response._finish()
        if reusable:
            self._release(self, True)
        else:
            self.close()

    def _fail(self, error: UpstreamError | BaseException) -> None:
        if not isinstance(error, UpstreamError):
            error = UpstreamProtocolError(self.upstream, repr(error))
        response = self._response
        self._response = None
        self._close_dead()
        if response is not None and self._head_done:
            response._finish(error)  # the head is out (or about to be): the body broke off
            if self._ready is not None:
                self._hand_over()
        else:
            callback, self._on_head = self._on_head, None
            if callback is not None:
                callback(None, error)

    def _close_dead(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()
        self._gone()

    def _touch(self) -> None:
        self._last_activity = self._loop.time()

    def _arm_timer(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_at(
                min(self._last_activity + self.read_timeout, self._deadline), self._on_timer
            )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        """One timer per connection, not per exchange: it fires at the earliest deadline an
        exchange could have had, and re-arms from the last activity if there was some since."""
        self._timer = None
        if self._response is None:
            return  # idle: the next exchange arms it again
        now = self._loop.time()
        if now >= self._deadline:
            self._fail(
                UpstreamTimeout(
                    self.upstream, f"response not complete within {self._response_timeout:g}s"
                )
            )
            return
        if self._reading_paused or self._awaiting_client:
            self._touch()  # the client is the slow one, not the upstream
        if now - self._last_activity < self.read_timeout:
            self._arm_timer()
            return
        what = "body" if self._head_done else "response head"
        self._fail(UpstreamTimeout(self.upstream, f"no {what} within {self.read_timeout:g}s"))
