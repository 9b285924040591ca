"""Reading a client's request body when it did not arrive with its head: whole when small (it
can be replayed to the control arm), streamed when larger. Each wait on the client is bounded
by client_body_timeout between two reads (`ClientRequest.next_chunk`), as nginx bounds a pause,
not the whole body."""

from __future__ import annotations

from collections.abc import AsyncIterator

from abgate.config.model import ProxySettings
from abgate.proxy.request import BodyTooLarge, ClientGone, ClientRequest, ClientTooSlow

__all__ = [
    "BodyTooLarge",
    "ClientGone",
    "ClientTooSlow",
    "read_body",
    "too_large",
    "too_slow",
]


async def read_body(
    request: ClientRequest, settings: ProxySettings
) -> tuple[bytes | AsyncIterator[bytes] | None, int | None]:
    """The body to send and its framing: (body, Content-Length) or (stream, None=chunked)."""
    length = request.content_length
    if length is not None:
        if length <= settings.buffer_body_size:
            pieces = []
            while chunk := await request.next_chunk():
                pieces.append(chunk)
            data = b"".join(pieces)
            if len(data) != length:
                raise ClientGone
            return data or None, length
        return stream_body(request, b"", length, settings.max_body_size), length
    # Chunked: buffer up to the threshold, stream the rest (chunked) if there is more.
    pieces, size = [], 0
    while size <= settings.buffer_body_size:
        chunk = await request.next_chunk()
        if not chunk:
            data = b"".join(pieces)
            return data or None, len(data)
        pieces.append(chunk)
        size += len(chunk)
        if size > settings.max_body_size:
            raise BodyTooLarge
    return stream_body(request, b"".join(pieces), None, settings.max_body_size), None


async def stream_body(
    request: ClientRequest, first: bytes, length: int | None, limit: int
) -> AsyncIterator[bytes]:
    sent = len(first)
    if first:
        yield first
    while chunk := await request.next_chunk():
        sent += len(chunk)
        if sent > limit:
            raise BodyTooLarge
        yield chunk
    if length is not None and sent != length:
        raise ClientGone


def too_large(settings: ProxySettings) -> str:
    return f"request body over {settings.max_body_size} bytes"


def too_slow(settings: ProxySettings) -> str:
    return f"no request body within {settings.client_body_timeout:g}s"
