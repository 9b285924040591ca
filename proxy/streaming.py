"""An upstream's answer whose body is still arriving when its head is parsed: the head goes
to the client at once, the body as it comes, with the client's back-pressure (the upstream's
socket pauses while abgate waits on a slow reader). However it ends is written on the request
(`status`, `error`) for the record: a body the upstream broke off is a 502 with its error
kind, a client that left is a 499 (nginx's code), not the head's status."""

from __future__ import annotations

import logging
from time import perf_counter

from abgate.proxy.errors import UpstreamError
from abgate.proxy.request import ClientGone, ClientRequest
from abgate.proxy.respond import (
    CHUNK_END,
    CHUNKED,
    answer_head,
    chunk,
    content_length,
    plain_body,
    upstream_length,
)
from abgate.proxy.upstream_response import UpstreamResponse

log = logging.getLogger("abgate.proxy")


async def relay(
    req: ClientRequest, response: UpstreamResponse, seconds: float, date: bytes
) -> bool:
    """Send the answer on; True when the client connection may be kept alive after it."""
    conn = req.conn
    assert conn is not None
    status, minor = response.status, req.minor
    keep_alive = req.keep_alive and req.body_done
    length = upstream_length(response.headers)
    chunked = False
    if req.method == "HEAD" or not plain_body(status):
        framing = b"" if length is None else content_length(length)
    elif length is not None:
        framing = content_length(length)
    elif minor == 1:
        framing, chunked = CHUNKED, True
    else:
        framing, keep_alive = b"", False  # HTTP/1.0: the end of the body is the close
    conn.write(answer_head(req, response, framing, keep_alive, date))
    req.status = status
    req.overhead = perf_counter() - req.started - seconds
    try:
        if req.method != "HEAD":
            while data := await response.read():
                if conn.transport is None:
                    raise ClientGone
                if chunked:
                    conn.writelines(chunk(data))
                else:
                    conn.write(data)
                if conn.write_paused:
                    await conn.drain()
            if chunked:
                conn.write(CHUNK_END)
    except UpstreamError as exc:
        # The head went out already: all that can be said now is an abrupt close.
        log.warning("upstream %s broke off a response body: %s", exc.upstream, exc.detail)
        req.status, req.error, keep_alive = 502, exc.kind, False
        conn.abort()
    except ClientGone:
        log.debug("client went away while receiving a response")
        req.status, keep_alive = 499, False
    finally:
        response.abandon()
    return keep_alive
