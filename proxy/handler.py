"""The request path: match a route, pick an arm, forward, answer. No I/O but the upstream's.

The connection (proxy/protocol.py) calls `start` when a request head is complete. A request
whose body is already in (most of them) and whose upstream has an idle pooled connection runs
as a chain of callbacks: split -> write upstream -> (upstream head and body parsed) -> one
write to the client -> record. No task, coroutine or response object is made for it. A task
is made only where the path must wait: a body still arriving, a connection to open or wait
for, a body to stream either way, a replay on a fresh connection.

Every request ends in `_finish`, which settles its breaker ticket and builds the one outcome
record every sink reads (the Prometheus counters are one). Everything a request needs was
resolved when the route table was built (pools, counters, header bytes).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine, Sequence
from time import perf_counter
from typing import Any
from urllib.parse import unquote

import httptools

from abgate.proxy import validation
from abgate.proxy.breaker import BreakerState
from abgate.proxy.destination import Destination, ExperimentRoute, Fallback, Routing, Target
from abgate.proxy.errors import UpstreamClosed, UpstreamError
from abgate.proxy.headers import RequestHead, RequestIds, build_request_head
from abgate.proxy.metrics import ProxyMetrics
from abgate.proxy.outcome import Outcome, OutcomeSink, arm_statistics
from abgate.proxy.paths import PathRefused, normalize_target
from abgate.proxy.request import ClientRequest
from abgate.proxy.request_body import (
    BodyTooLarge,
    ClientGone,
    ClientTooSlow,
    read_body,
    too_large,
    too_slow,
)
from abgate.proxy.respond import (
    SMALL_BODY,
    VIA,
    DateField,
    answer_head,
    content_length,
    local_answer,
    plain_body,
    routing_fields,
    upstream_length,
)
from abgate.proxy.streaming import relay
from abgate.proxy.upstream import UpstreamResponse

__all__ = ["Destination", "ExperimentRoute", "Fallback", "ProxyHandler", "Routing", "Target"]

log = logging.getLogger("abgate.proxy")

# Lets the ML backend tell copies from live traffic (Envoy appends "-shadow" to Host instead).
_SHADOW_HEADER = b"X-ABGate-Shadow: 1\r\n"
_CLOSED = (BreakerState.CLOSED, BreakerState.FORCED_CLOSED)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
Waiting = Coroutine[Any, Any, None] | None  # what is left of a request that must wait


class ProxyHandler:
    """The request path, called by the listener's connections. `routing` is swapped whole on
    reload; a request reads it once."""

    def __init__(
        self,
        routing: Routing,
        metrics: ProxyMetrics,
        sinks: Sequence[OutcomeSink] = (arm_statistics,),
    ) -> None:
        self.routing = routing
        self.metrics = metrics
        self.sinks = tuple(sinks)
        self.request_ids = RequestIds()
        self._date = DateField()
        self.tasks: set[asyncio.Task[None]] = set()  # requests that wait; awaited on close

    # -- from the head to the upstream ----------------------------------------------------

    def start(self, req: ClientRequest) -> None:
        """A request head is complete (and whatever of its body came with it)."""
        try:
            self._start(req)
        except Exception:
            self._crashed(req)

    def _start(self, req: ClientRequest) -> None:
        routing = req.routing = self.routing
        settings = routing.settings
        started = req.started
        req.request_id = self.request_ids.of(req.client_id)
        target = self._target(req)
        if target is None:
            return
        if isinstance(target, ExperimentRoute):
            req.route = target
            routing.budget.request(started)
            draw = req.draw = target.splitter.assign(req)
            dest = target.control
            if target.splitter.treats(draw):
                if self._admit(req, target.treatment, started):
                    dest = target.treatment
                else:
                    req.fallback = Fallback("breaker-open", target.treatment, started)
            assert dest.phase is not None
            req.phase = dest.phase.tag  # counted in the phase its arm was chosen in
            req.dest = dest
        else:
            req.dest = target
            if not self._admit(req, target, started):
                self._local(req, 503, f"circuit open for upstream {target.pool.name}")
                return
        length = req.content_length
        if length is not None and length > settings.max_body_size:
            self._local(req, 413, too_large(settings))
        elif not req.body_done:
            self._spawn(req, self._read_and_send(req))
        elif req.body_bytes > settings.max_body_size:
            self._local(req, 413, too_large(settings))
        else:
            size = req.body_bytes
            self._send(req, req.take_body() if size else None, size)

    def _target(self, req: ClientRequest) -> Target | None:
        """The route the request matches, its forwarded target set; or answered already."""
        uri = req.target
        if "#" in uri:  # a fragment is not part of a request-target (RFC 9112 §3.2)
            uri = uri.split("#", 1)[0]
        if not uri.startswith("/") and uri != "*":  # absolute-form: send origin-form on
            try:
                url = httptools.parse_url(uri.encode("latin-1"))
            except httptools.HttpParserInvalidURLError:
                self._local(req, 400, "malformed request: invalid request-target")
                return None
            uri = (url.path or b"/").decode("latin-1")
            if url.query:
                uri += "?" + url.query.decode("latin-1")
        path = uri.split("?", 1)[0]
        if "/." in uri or "%" in uri:  # maybe dot-segments: match what will be forwarded
            try:
                normalized = normalize_target(uri)
            except PathRefused as exc:
                self._local(req, 400, f"malformed request: {exc}")
                return None
            if normalized is not None:
                path, uri = normalized
            elif "%" in path:
                path = unquote(path)
        req.uri = uri
        target = req.routing.routes.match(path, req.method)  # type: ignore[union-attr]
        if target is None:
            self._local(req, 404, "no route matches this request")
        return target

    @staticmethod
    def _admit(req: ClientRequest, dest: Destination, now: float) -> bool:
        """Whether `dest`'s breaker lets the request through; a half-open trial it admits
        is a ticket the request holds until it is reported or released (`_finish`)."""
        breaker = dest.breaker
        if not breaker.allow(now):
            return False
        if breaker.state is BreakerState.HALF_OPEN:
            req.ticket = (breaker, breaker.generation)
        return True

    async def _read_and_send(self, req: ClientRequest) -> None:
        settings = req.routing.settings  # type: ignore[union-attr]
        try:
            body, framing = await read_body(req, settings)
        except BodyTooLarge:
            self._local(req, 413, too_large(settings))
            return
        except ClientTooSlow:
            self._local(req, 408, too_slow(settings))
            return
        except ClientGone:
            self._local(req, 400, "client closed the request body")
            return
        if body is None or isinstance(body, bytes):
            waiting = self._send(req, body, framing, in_task=True)
            if waiting is not None:
                await waiting
            return
        req.framing, req.streamed = framing, True
        await self._exchange(req, self._head(req, req.dest, framing).data, body)

    def _send(
        self, req: ClientRequest, body: bytes | None, framing: int | None, *, in_task: bool = False
    ) -> Waiting:
        """Send a request whose body is in hand to `req.dest`: at once on an idle pooled
        connection, else from a task that waits for one."""
        dest = req.dest
        assert dest is not None
        req.body, req.framing = body, framing
        head = self._head(req, dest, framing).data
        req.upstream_started = perf_counter()
        conn = dest.pool.take_idle()
        if conn is None:
            waiting = self._exchange(req, head, body)
            if in_task:
                return waiting
            self._spawn(req, waiting)
            return None
        on_head = functools.partial(self._on_head, req, head)
        conn.send(head, body, head_only=req.method == "HEAD", on_head=on_head)
        return None

    def _head(
        self, req: ClientRequest, dest: Destination | None, framing: int | None, extra: bytes = b""
    ) -> RequestHead:
        assert dest is not None
        return build_request_head(
            req.method,
            req.uri,
            req.headers,
            req.connection,
            client_ip=req.remote,
            default_host=dest.host_header,
            via=VIA,
            body_length=framing,
            request_id=req.request_id,
            extra=extra,
        )

    def _on_head(
        self,
        req: ClientRequest,
        head: bytes,
        response: UpstreamResponse | None,
        error: UpstreamError | None,
    ) -> None:
        """The upstream's answer (or failure) to a request sent from `_send`."""
        try:
            if error is not None:
                if isinstance(error, UpstreamClosed) and error.nothing_received:
                    # An idle pooled connection the upstream had closed: send again, once.
                    self._spawn(req, self._replay(req, head))
                    return
                waiting = self._failed(req, error)
            else:
                assert response is not None
                waiting = self._answered(req, response)
            if waiting is not None:
                self._spawn(req, waiting)
        except Exception:
            self._crashed(req)

    async def _exchange(self, req: ClientRequest, head: bytes, body: Any) -> None:
        """The exchange of a request that waits: for a connection, or on its own body."""
        dest = req.dest
        assert dest is not None
        req.upstream_started = perf_counter()
        settings = req.routing.settings  # type: ignore[union-attr]
        try:
            response = await dest.pool.request(
                head, body, head_only=req.method == "HEAD", chunked=req.framing is None
            )
        except UpstreamError as exc:
            waiting = self._failed(req, exc)
        except BodyTooLarge:
            self._release_ticket(req)  # abgate's refusal, not the upstream's failure
            self._local(req, 413, too_large(settings))
            return
        except ClientTooSlow:
            self._release_ticket(req)
            self._local(req, 408, too_slow(settings))
            return
        except ClientGone:
            self._release_ticket(req)
            self._local(req, 400, "client closed the request body")
            return
        else:
            waiting = self._answered(req, response)
        if waiting is not None:
            await waiting

    async def _replay(self, req: ClientRequest, head: bytes) -> None:
        dest = req.dest
        assert dest is not None
        try:
            response = await dest.pool.replay(head, req.body, head_only=req.method == "HEAD")
        except UpstreamError as exc:
            waiting = self._failed(req, exc)
        else:
            waiting = self._answered(req, response)
        if waiting is not None:
            await waiting

    # -- the upstream's answer ------------------------------------------------------------

    def _failed(self, req: ClientRequest, exc: UpstreamError) -> Waiting:
        now = perf_counter()
        dest = req.dest
        assert dest is not None
        assert req.upstream_started is not None
        seconds = now - req.upstream_started
        if exc.congestion:  # abgate's own pool was full: not the upstream's failure
            self._release_ticket(req)
            # A treatment whose connections are all taken (a hung ML backend fills them
            # before its first timeout can open the breaker) is answered by control.
            if self._may_fall_back(req):
                return self._fall_back(req, exc.kind, (exc.status, seconds))
            log.warning("%s (request %s)", exc, req.request_id)
            req.error = exc.kind
            self._local(req, exc.status, exc.detail, reason="pool_busy")
            return None
        self._observe(req, dest, now, None, seconds)
        if self._may_fall_back(req):
            return self._fall_back(req, exc.kind, (exc.status, seconds))
        log.warning("upstream %s failed: %s (request %s)", exc.upstream, exc.detail, req.request_id)
        req.error = exc.kind
        req.answered_at = now
        self._local(req, exc.status, exc.detail)
        return None

    def _answered(self, req: ClientRequest, response: UpstreamResponse) -> Waiting:
        now = req.answered_at = perf_counter()
        dest, route = req.dest, req.route
        assert dest is not None
        assert req.upstream_started is not None
        status = response.status
        seconds = now - req.upstream_started
        failed = self._observe(req, dest, now, status, seconds)
        if failed and route is not None and route.fallback_on_5xx and self._may_fall_back(req):
            response.abandon()
            return self._fall_back(req, f"status-{status}", (status, seconds))
        if (
            route is not None
            and route.shadow is not None
            and dest is route.control
            and req.fallback is None
            and response.complete
            and not req.streamed
            and route.shadow.sampled()
        ):
            treatment = route.treatment
            # The copy's head is built in the background task, off the client's path.
            copy = functools.partial(self._head, req, treatment, req.framing, extra=_SHADOW_HEADER)
            route.shadow.mirror(
                treatment.pool, treatment.breaker, copy, req.body, status, response.body(), seconds
            )
        if response.complete:
            self._respond(req, response, seconds)
            return None
        return self._stream(req, response, seconds)

    def _observe(
        self, req: ClientRequest, dest: Destination, now: float, status: int | None, seconds: float
    ) -> bool:
        """The breaker judges one exchange; a trial ticket for it is settled by this."""
        ticket = req.ticket
        if ticket is not None and ticket[0] is dest.breaker:
            req.ticket = None
        return dest.breaker.observe(now, status, seconds)

    @staticmethod
    def _release_ticket(req: ClientRequest) -> None:
        ticket = req.ticket
        if ticket is not None:
            req.ticket = None
            ticket[0].release(ticket[1])

    def _may_fall_back(self, req: ClientRequest) -> bool:
        """Safe to answer from the control arm instead: a treatment call, not a fallback
        already, a body we still hold, a method (or route) that may be sent twice, and room
        in the retry budget."""
        route = req.route
        return (
            route is not None
            and route.fallback
            and req.dest is route.treatment
            and req.fallback is None
            and not req.streamed
            and (req.method in IDEMPOTENT or route.replayable)
            and req.routing.budget.try_retry(perf_counter(), req.started)  # type: ignore[union-attr]
        )

    def _fall_back(self, req: ClientRequest, reason: str, tried: tuple[int, float]) -> Waiting:
        """Send the request again to the control arm; the answer is marked, and counted in
        the treatment arm it was assigned to (see `Fallback`)."""
        route, dest = req.route, req.dest
        assert route is not None
        assert dest is not None
        assert req.upstream_started is not None
        req.fallback = Fallback(reason, dest, req.upstream_started, tried)
        req.dest = route.control
        return self._send(req, req.body, req.framing, in_task=True)

    # -- to the client --------------------------------------------------------------------

    def _respond(self, req: ClientRequest, response: UpstreamResponse, seconds: float) -> None:
        """A complete answer: one write of a prebuilt head and the body."""
        dest, conn = req.dest, req.conn
        assert dest is not None
        assert conn is not None
        status = response.status
        keep_alive = req.keep_alive and req.body_done
        body = response.body()
        typed = False
        if body and req.method != "HEAD" and plain_body(status):
            if dest.extractor is not None:
                req.values = dest.extractor.values(body, response.headers)
            if req.validation and req.route is not None:
                body = self._with_routing_decision(req, req.route, dest, body)
        if req.method == "HEAD":
            length = upstream_length(response.headers)
            framing = b"" if length is None else content_length(length)
            body = b""
        elif plain_body(status):
            framing, typed = content_length(len(body)), bool(body)
        else:
            framing, body = b"", b""
        head = answer_head(req, response, framing, keep_alive, self._date.now(), typed=typed)
        if len(body) <= SMALL_BODY:
            conn.write(head + body)
        else:
            conn.writelines((head, body))
        req.status = status
        req.overhead = perf_counter() - req.started - seconds
        self._finish(req)
        conn.done(req, keep_alive=keep_alive)

    @staticmethod
    def _with_routing_decision(
        req: ClientRequest, route: ExperimentRoute, dest: Destination, body: bytes
    ) -> bytes:
        """`X-Test-Mode: validation` asked for abgate's routing decision in the answer: the
        arm that served it, its confidence where a metric reads one, and whether a fallback
        to the control arm is configured and its breaker closed."""
        confidence = next((v for name, v in req.values if name == "confidence"), None)
        fallback = route.fallback and route.control.breaker.state in _CLOSED
        return validation.with_routing_decision(body, dest.arm, confidence, fallback)

    async def _stream(self, req: ClientRequest, response: UpstreamResponse, seconds: float) -> None:
        """An answer whose body is still arriving, relayed (proxy/streaming.py); recorded
        once it ends, however it ends."""
        keep_alive = await relay(req, response, seconds, self._date.now())
        self._finish(req)
        assert req.conn is not None
        req.conn.done(req, keep_alive=keep_alive)

    def _local(
        self, req: ClientRequest, status: int, error: str, *, reason: str | None = None
    ) -> None:
        """An answer abgate makes itself: small JSON, with the routing fields, recorded."""
        conn, dest = req.conn, req.dest
        assert conn is not None
        keep_alive = req.keep_alive and req.body_done and status != 408
        conn.write(
            local_answer(
                req.minor,
                status,
                error,
                None if dest is None else dest.pool.name,
                req.request_id or self.request_ids.next(),
                b"" if dest is None else routing_fields(req),
                VIA,
                keep_alive,
                self._date.now(),
            )
        )
        req.status = status
        req.local = reason or _REASONS.get(status, "error")
        if not req.answered_at:
            req.answered_at = perf_counter()
        self._finish(req)
        conn.done(req, keep_alive=keep_alive)

    # -- the end of every request ---------------------------------------------------------

    def _finish(self, req: ClientRequest) -> None:
        """The one place a request is recorded: its trial ticket settled, one record to
        every sink. A fallback's user waited from its first try."""
        self._release_ticket(req)
        served = req.dest
        if served is None:  # refused before any route matched: only a counter to move
            self.metrics.count_local_response(req.status, req.local)
            return
        fallback = req.fallback
        if fallback is None:
            assigned, since = served, req.upstream_started
        else:
            assigned, since = fallback.assigned, fallback.since
        phase = req.phase
        outcome = Outcome(
            req.request_id,
            assigned,
            served,
            -1 if phase is None else phase.id,
            req.draw,
            req.status,
            None if since is None or not req.answered_at else req.answered_at - since,
            req.error,
            "" if fallback is None else fallback.reason,
            req.values,
            req.local,
            None if fallback is None else fallback.tried,
            req.overhead,
        )
        for sink in self.sinks:
            sink(outcome)

    def _spawn(self, req: ClientRequest, waiting: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(req, waiting))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _guarded(self, req: ClientRequest, waiting: Coroutine[Any, Any, None]) -> None:
        try:
            await waiting
        except Exception:
            self._crashed(req)

    def _crashed(self, req: ClientRequest) -> None:
        """A bug on the request path: logged with its traceback, answered 500 if nothing
        was sent yet, never left hanging."""
        log.exception("error handling request %s", req.request_id)
        conn = req.conn
        if conn is None:
            return
        if req.status == 0:
            req.error = "internal"
            self._local(req, 500, "internal error")
        else:  # its answer is (partly) written: close after what went out, not a reset
            conn.done(req, keep_alive=False)

    async def aclose(self) -> None:
        """Cancel the requests still waiting (after the listener's grace period)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_REASONS = {
    400: "bad_request",
    404: "no_route",
    408: "client_timeout",
    413: "body_too_large",
    500: "internal_error",
    502: "bad_gateway",
    503: "circuit_open",
    504: "gateway_timeout",
}
