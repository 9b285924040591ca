"""What changes in headers on the way through (RFC 9110 §7.6), and nothing else.

Requests: hop-by-hop fields go (those of §7.6.1 plus every field named in `Connection`),
`Via` and `X-Forwarded-For` are appended to, `X-Forwarded-Proto/-Host` are set when absent (an
edge in front of abgate may already have set them), `X-Request-Id` is the request's (kept when
the client's is usable, see `usable_request_id`, else generated).
Responses: hop-by-hop fields go, framing is abgate's own (it re-frames the body), repeated
fields such as `Set-Cookie` stay repeated and in order; every head is built here as bytes.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"trailer",
    }
)
# Request fields abgate rewrites itself: framing (set from the body it sends) and the 100-continue
# handshake, which the server side already answered.
_REQUEST_OWN = frozenset({b"content-length", b"expect", b"x-forwarded-for", b"via"})
_RESPONSE_OWN = frozenset({b"content-length"})

RawHeaders = Iterable[tuple[bytes, bytes]]


def connection_tokens(value: str | bytes | None) -> frozenset[bytes]:
    """Field names listed in a `Connection` header, lower-cased."""
    if not value:
        return frozenset()
    raw = value.encode("latin-1") if isinstance(value, str) else value
    return frozenset(token.strip().lower() for token in raw.split(b","))


class RequestIds:
    """Cheap unique request ids: a random per-process prefix and a counter."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"

    def of(self, client_id: bytes | None) -> str:
        """The id a request is known by: the client's when usable, else a new one."""
        return usable_request_id(client_id) or self.next()


def usable_request_id(value: bytes | None) -> str | None:
    """A client's X-Request-Id, if it is one abgate can echo, log and store: 1 to 200
    visible ASCII characters. Anything else (bytes that are not text, control characters)
    is replaced by a generated id."""
    if value is None or not 0 < len(value) <= 200:
        return None
    if not value.isascii() or any(byte < 0x21 or byte == 0x7F for byte in value):
        return None
    return value.decode("ascii")


class RequestHead:
    """The request line and headers sent upstream, as one bytes object."""

    __slots__ = ("data", "request_id")

    def __init__(self, data: bytes, request_id: str) -> None:
        self.data = data
        self.request_id = request_id


def build_request_head(
    method: str,
    target: str,
    raw_headers: RawHeaders,
    connection: bytes | None,
    *,
    client_ip: str | None,
    default_host: bytes,
    via: bytes,
    body_length: int | None,
    request_id: str,
    extra: bytes = b"",
) -> RequestHead:
    """`body_length` None means the body is sent chunked; 0 means no body. The client's
    X-Request-Id fields are replaced by `request_id` (the one the request is known by)."""
    dropped = connection_tokens(connection) if connection else frozenset()
    out = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
    append = out.append
    forwarded_for: bytes | None = None
    prior_via: bytes | None = None
    has_host = has_proto = has_fhost = False
    host_value = default_host
    for name, value in raw_headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in dropped:
            continue
        if lower in _REQUEST_OWN:
            if lower == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            elif lower == b"via":
                prior_via = value if prior_via is None else prior_via + b", " + value
            continue
        if lower == b"host":
            has_host = True
            host_value = value
        elif lower == b"x-request-id":
            continue  # sent below: the id this request is known by
        elif lower == b"x-forwarded-proto":
            has_proto = True
        elif lower == b"x-forwarded-host":
            has_fhost = True
        append(name + b": " + value + b"\r\n")
    if not has_host:
        host_value = default_host
        append(b"Host: " + default_host + b"\r\n")
    append(b"X-Request-Id: " + request_id.encode() + b"\r\n")
    if client_ip:
        ip = client_ip.encode("latin-1")
        append(
            b"X-Forwarded-For: " + (forwarded_for + b", " + ip if forwarded_for else ip) + b"\r\n"
        )
    elif forwarded_for:
        append(b"X-Forwarded-For: " + forwarded_for + b"\r\n")
    if not has_proto:
        append(b"X-Forwarded-Proto: http\r\n")
    if not has_fhost:
        append(b"X-Forwarded-Host: " + host_value + b"\r\n")
    append(b"Via: " + (prior_via + b", " + via if prior_via else via) + b"\r\n")
    if extra:
        append(extra)
    if body_length is None:
        append(b"Transfer-Encoding: chunked\r\n\r\n")
    elif body_length or method in ("POST", "PUT", "PATCH"):
        append(b"Content-Length: " + str(body_length).encode() + b"\r\n\r\n")
    else:
        append(b"\r\n")
    return RequestHead(b"".join(out), request_id)


# `Connection` values that name no other field: nothing more to drop.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close"})


def response_fields(
    raw_headers: Sequence[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """The upstream response fields to send on, in order (minus hop-by-hop fields, those the
    upstream's `Connection` names, and framing), and its `Via` values joined (None: none)."""
    pairs: list[tuple[bytes, bytes]] = []
    dropped: frozenset[bytes] | None = None
    prior_via: bytes | None = None
    for pair in raw_headers:
        name, value = pair
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _RESPONSE_OWN:
            if lower == b"connection" and value not in _PLAIN_CONNECTION:
                dropped = connection_tokens(value) | (dropped or frozenset())
            continue
        if lower == b"via":
            prior_via = value if prior_via is None else prior_via + b", " + value
            continue
        pairs.append(pair)
    if dropped:
        pairs = [(k, v) for k, v in pairs if k.lower() not in dropped]
    return pairs, prior_via


def build_response_head(
    minor: int,
    status: bytes,
    raw_headers: Sequence[tuple[bytes, bytes]],
    framing: bytes,
    via: bytes,
    routing: bytes,
    request_id: bytes,
    keep_alive: bool,
    date: bytes,
    *,
    typed: bool = True,
) -> bytes:
    """The whole head of an upstream's answer, as bytes; `framing` is abgate's own
    (`Content-Length: N\r\n`, `Transfer-Encoding: chunked\r\n`, or b"" for none).

    `status` is the status line, `routing` abgate's own fields (each ending in CRLF),
    `request_id` sent when the upstream sent none, `date` the Date field added when it sent
    none (RFC 9110 §6.6.1). As aiohttp would: Content-Type defaults to
    application/octet-stream for a body (`typed`: there is one), `Connection: keep-alive`
    answers an HTTP/1.0 client that keeps the connection, `Connection: close` an HTTP/1.1
    one that does not."""
    pairs, prior_via = response_fields(raw_headers)
    out = [status]
    append = out.append
    has_date = has_type = has_id = False
    for name, value in pairs:
        lower = name.lower()
        if lower == b"date":
            has_date = True
        elif lower == b"content-type":
            has_type = True
        elif lower == b"x-request-id":
            has_id = True
        append(name + b": " + value + b"\r\n")
    append(b"Via: " + (prior_via + b", " + via if prior_via else via) + b"\r\n")
    append(routing)
    if not has_id:
        append(b"X-Request-Id: " + request_id + b"\r\n")
    if not has_date:
        append(date)
    if not has_type and typed:
        append(b"Content-Type: application/octet-stream\r\n")
    if keep_alive:
        if minor == 0:
            append(b"Connection: keep-alive\r\n")
    elif minor == 1:
        append(b"Connection: close\r\n")
    append(framing)
    append(b"\r\n")
    return b"".join(out)
