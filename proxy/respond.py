"""Answers to the client as bytes: status lines, the Date field, framing, and abgate's own
small JSON answers.

Every head the data plane writes is built as bytes (`proxy.headers.build_response_head` for
an upstream's answer, `local_answer` here for abgate's own) and written with its body in one
transport write when the body is in memory: no response object, no header multidict, no
second serialisation per request.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

import orjson

from abgate.proxy.headers import build_response_head

if TYPE_CHECKING:
    from abgate.proxy.request import ClientRequest
    from abgate.proxy.upstream import UpstreamResponse

VIA = b"1.1 abgate"

SMALL_BODY = 256 * 1024  # joined with the head into one bytes object; larger: writelines
_STATUS_LINES: dict[tuple[int, int], bytes] = {}
CHUNK_END = b"0\r\n\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"


def status_line(minor: int, status: int) -> bytes:
    """`HTTP/1.x NNN Reason\\r\\n`, made once per (version, status)."""
    line = _STATUS_LINES.get((minor, status))
    if line is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        line = _STATUS_LINES[(minor, status)] = f"HTTP/1.{minor} {status} {reason}\r\n".encode()
    return line


class DateField:
    """`Date: ...\\r\\n` for the current second, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
        return self._value


def plain_body(status: int) -> bool:
    """Whether an answer (not to HEAD) has a body framed plainly (not 1xx, 204 or 304)."""
    return status >= 200 and status not in (204, 304)


def content_length(length: int) -> bytes:
    return b"Content-Length: " + str(length).encode() + b"\r\n"


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One piece of a chunked body, for `writelines`."""
    return f"{len(data):x}\r\n".encode(), data, b"\r\n"


def upstream_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length the upstream declared, if any."""
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def local_answer(
    minor: int,
    status: int,
    error: str,
    upstream: str | None,
    request_id: str,
    routing: bytes,
    via: bytes,
    keep_alive: bool,
    date: bytes,
) -> bytes:
    """abgate's own answer (a refusal, an upstream failure): small JSON, with the request id,
    Via and the routing fields, as one bytes object."""
    body = orjson.dumps({"error": error, "upstream": upstream, "request_id": request_id})
    connection = (
        (b"Connection: keep-alive\r\n" if minor == 0 else b"")
        if keep_alive
        else (b"Connection: close\r\n" if minor == 1 else b"")
    )
    return b"".join(
        (
            status_line(minor, status),
            b"Content-Type: application/json\r\n",
            b"X-Request-Id: ",
            request_id.encode(),
            b"\r\nVia: ",
            via,
            b"\r\n",
            routing,
            date,
            connection,
            content_length(len(body)),
            b"\r\n",
            body,
        )
    )


def routing_fields(req: ClientRequest) -> bytes:
    """What abgate tells the client about the routing of its request: the experiment, the
    arm it was assigned (kept on a fallback), the phase its arm was chosen in, who answered
    and why."""
    dest, phase, fallback = req.dest, req.phase, req.fallback
    if dest is None or phase is None:
        return b""
    if fallback is None:
        return dest.arm_fields + phase.field + dest.served_field
    reason = b"X-ABGate-Fallback: " + fallback.reason.encode() + b"\r\n"
    return fallback.assigned.arm_fields + phase.field + dest.served_field + reason


def answer_head(
    req: ClientRequest,
    response: UpstreamResponse,
    framing: bytes,
    keep_alive: bool,
    date: bytes,
    *,
    typed: bool = True,
) -> bytes:
    """The head of an upstream's answer as it goes to the client (proxy/headers.py)."""
    return build_response_head(
        req.minor,
        status_line(req.minor, response.status),
        response.headers,
        framing,
        VIA,
        routing_fields(req),
        req.request_id.encode(),
        keep_alive,
        date,
        typed=typed,
    )
