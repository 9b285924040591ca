"""A proxied answer whose body is in memory, written to the client in one transport write.

Most answers of a decision endpoint are small and complete by the time their head is
parsed. For them abgate builds the response head itself, as bytes, from the upstream's raw
header pairs (`proxy.headers.build_response_head`), and writes head and body at once: no
`web.Response`, no header multidict, no second serialisation (aiohttp's response machinery
was the largest share of a request after the syscalls: benchmarks/RESULTS.md). HEAD,
1xx/204/304 answers and bodies still arriving keep aiohttp's streaming response, with its
back-pressure and framing rules.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

SMALL_BODY = 256 * 1024  # joined with the head into one bytes object; larger: writelines
_STATUS_LINES: dict[tuple[int, int], bytes] = {}


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
    """Whether an answer (not to HEAD) has a body framed plainly, for the one-write path."""
    return status >= 200 and status not in (204, 304)


class PrebuiltResponse(web.StreamResponse):
    """Head and body as bytes already: `prepare` writes them to the transport; aiohttp's
    server then only reads `keep_alive`. When the transport's buffer is over its high-water
    mark (a client that does not read), it waits for it to drain, as aiohttp's writer does."""

    def __init__(self, status: int, head: bytes, body: bytes, keep_alive: bool) -> None:
        super().__init__(status=status)
        self._head = head
        self._payload = body
        self._keep_alive = keep_alive

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        self._eof_sent = True
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away before its answer")
        body = self._payload
        if len(body) <= SMALL_BODY:
            transport.write(self._head + body)
        else:
            transport.writelines((self._head, body))
        self._body_length = len(body)
        self._head = self._payload = b""
        if transport.get_write_buffer_size():
            await request.writer.drain()
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None
