"""Reading a client's request body: whole when small (it can be replayed to the control arm),
streamed when larger, each wait on the client bounded by client_body_timeout (as nginx)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import ClientConnectionResetError, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EofStream, StreamReader

from config.model import ProxySettings

# Client-side failures while reading a request body or writing a response.
CLIENT_GONE = (ConnectionError, ClientConnectionResetError, HttpProcessingError, EofStream)


class BodyTooLarge(Exception):
    """A request body over max_body_size (413)."""


class ClientGone(Exception):
    """The client closed or broke off its body before the end of it (400)."""


class ClientTooSlow(Exception):
    """No request body bytes within client_body_timeout (408, as nginx)."""


async def read_within(content: StreamReader, seconds: float) -> bytes:
    """The next piece of a request body, waiting on the client for at most `seconds`; no
    timer when the whole body is in already (a small body arrives with the head)."""
    if content.is_eof():
        return await content.readany()
    try:
        async with asyncio.timeout(seconds):
            return await content.readany()
    except TimeoutError:
        raise ClientTooSlow from None


async def read_request_body(
    request: web.BaseRequest,
    length: int | None,
    settings: ProxySettings,
) -> tuple[bytes | AsyncIterator[bytes] | None, int | None]:
    """The body to send and its framing: (body, Content-Length) or (stream, None=chunked).

    Small bodies are read whole (they can be replayed); larger ones stream through.
    """
    content = request.content
    if length == 0 or (length is None and not request.body_exists):
        return None, 0
    if not content.is_eof() and request.headers.get("Expect", "").lower() == "100-continue":
        # The client waits for this before sending the body (the Expect header itself
        # is not forwarded: this hop answers it, as nginx does).
        transport = request.transport
        if transport is not None:
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    timeout = settings.client_body_timeout
    if length is not None:
        if length <= settings.buffer_body_size:
            if content.is_eof():  # all of it arrived with the head: no wait, no timer
                return await content.readexactly(length), length
            try:
                async with asyncio.timeout(timeout):
                    return await content.readexactly(length), length
            except TimeoutError:
                raise ClientTooSlow from None
        return stream_body(content, b"", length, settings.max_body_size, timeout), length
    # Chunked: buffer up to the threshold, stream the rest (chunked) if there is more.
    pieces: list[bytes] = []
    size = 0
    while size <= settings.buffer_body_size:
        chunk = await read_within(content, timeout)
        if not chunk:
            data = b"".join(pieces)
            return data, len(data)
        pieces.append(chunk)
        size += len(chunk)
        if size > settings.max_body_size:
            raise BodyTooLarge
    return stream_body(content, b"".join(pieces), None, settings.max_body_size, timeout), None


async def stream_body(
    content: StreamReader, first: bytes, length: int | None, limit: int, seconds: float
) -> AsyncIterator[bytes]:
    sent = len(first)
    if first:
        yield first
    while True:
        try:
            chunk = await read_within(content, seconds)
        except CLIENT_GONE as exc:
            raise ClientGone from exc
        if not chunk:
            if length is not None and sent != length:
                raise ClientGone
            return
        sent += len(chunk)
        if sent > limit:
            raise BodyTooLarge
        yield chunk


def too_large(settings: ProxySettings) -> str:
    return f"request body over {settings.max_body_size} bytes"


def too_slow(settings: ProxySettings) -> str:
    return f"no request body within {settings.client_body_timeout:g}s"
