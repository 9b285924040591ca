"""The request path: match a route, pick an arm, forward, answer. No I/O but the upstream's.

Everything a request needs was resolved when the route table was built (pools, counters,
header bytes); per request there is a route match, at most one hash, one upstream exchange
and a few counter increments.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter

import orjson
from aiohttp import web

from config.model import ProxySettings
from proxy import validation
from proxy.breaker import Breaker, BreakerState
from proxy.errors import UpstreamError
from proxy.headers import (
    RequestHead,
    RequestIds,
    build_request_head,
    build_response_head,
    copy_response_headers,
)
from proxy.measure import MetricExtractor, PhaseRef
from proxy.metrics import ProxyMetrics, TrafficStats
from proxy.outcome import NO_BUCKET, Outcome, OutcomeSink, arm_statistics
from proxy.paths import PathRefused, normalize_target
from proxy.pool import UpstreamPool
from proxy.request_body import (
    CLIENT_GONE,
    BodyTooLarge,
    ClientGone,
    ClientTooSlow,
    read_request_body,
    too_large,
    too_slow,
)
from proxy.respond import DateField, PrebuiltResponse, plain_body, status_line
from proxy.retry_budget import RetryBudget
from proxy.routing import Router
from proxy.shadow import Shadow
from proxy.split import Splitter
from proxy.upstream import UpstreamResponse

log = logging.getLogger("abgate.proxy")

VIA = "1.1 abgate"
_VIA_BYTES = VIA.encode()
# Lets the ML backend tell copies from live traffic (Envoy appends "-shadow" to Host instead).
_SHADOW_HEADER = b"X-ABGate-Shadow: 1\r\n"


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_CLOSED = (BreakerState.CLOSED, BreakerState.FORCED_CLOSED)


@dataclass(frozen=True, slots=True)
class Destination:
    """One upstream as reached through a route or an experiment arm."""

    pool: UpstreamPool
    breaker: Breaker
    stats: TrafficStats
    experiment: str  # "" when no experiment applies
    arm: str
    host_header: bytes
    extractor: MetricExtractor | None = None  # the experiment's extra metrics, if any
    phase: PhaseRef | None = None  # the experiment's current phase, if any
    # Routing fields of the answers it serves, made once: X-ABGate-Experiment and -Arm (as
    # the assigned arm, when no fallback), X-ABGate-Served-By.
    arm_fields: bytes = field(init=False, default=b"")
    served_field: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        if self.phase is not None:
            fields = f"X-ABGate-Experiment: {self.experiment}\r\nX-ABGate-Arm: {self.arm}\r\n"
            object.__setattr__(self, "arm_fields", fields.encode("latin-1"))
            served = f"X-ABGate-Served-By: {self.pool.name}\r\n".encode("latin-1")
            object.__setattr__(self, "served_field", served)


@dataclass(frozen=True, slots=True)
class ExperimentRoute:
    splitter: Splitter
    control: Destination
    treatment: Destination
    fallback: bool  # treatment failures may be answered by the control arm ...
    fallback_on_5xx: bool  # ... including 5xx answers
    replayable: bool  # the route's requests may be sent twice whatever their method
    shadow: Shadow | None  # copies of control-served requests to the treatment upstream


Target = Destination | ExperimentRoute


@dataclass(frozen=True, slots=True)
class Fallback:
    """A treatment-assigned request answered by the control arm. Under intention to treat it
    still counts, once, in the arm it was assigned, with what its user got (the final status,
    the time from the first try to the answer): a fallback is part of how the treatment
    behaves, and dropping it would unbalance the arms (a sample-ratio mismatch)."""

    reason: str
    assigned: Destination
    since: float  # when the first try began


@dataclass(frozen=True, slots=True)
class Routing:
    """What a request is handled with, swapped whole on reload: a request reads it once, so
    in-flight requests finish on the config they started with."""

    routes: Router[Target]
    settings: ProxySettings
    budget: RetryBudget


class ProxyHandler:
    """Callable handed to aiohttp's low-level server. `routing` is swapped whole on reload."""

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

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = perf_counter()
        routing = self.routing
        settings = routing.settings
        path, uri = request.path, request.raw_path
        if "/." in uri or "%" in uri:  # maybe dot-segments: match what will be forwarded
            try:
                normalized = normalize_target(uri)
            except PathRefused as exc:
                return self._local(request, 400, f"malformed request: {exc}", None, None)
            if normalized is not None:
                path, uri = normalized
        target = routing.routes.match(path, request.method)
        if target is None:
            return self._local(request, 404, "no route matches this request", None, None)
        route: ExperimentRoute | None = None
        fallback: Fallback | None = None
        draw = NO_BUCKET
        if isinstance(target, ExperimentRoute):
            route = target
            routing.budget.request(started)
            draw = target.splitter.assign(request)
            if target.splitter.treats(draw):
                dest = target.treatment
                if not dest.breaker.allow(started):
                    fallback = Fallback("breaker-open", dest, started)
                    dest = target.control
                    self.metrics.count_fallback(target.splitter.name, fallback.reason)
            else:
                dest = target.control
        else:
            dest = target
            if not dest.breaker.allow(started):
                return self._local(
                    request, 503, f"circuit open for upstream {dest.pool.name}", dest, None, draw
                )

        length = request.content_length
        if length is not None and length > settings.max_body_size:
            return self._local(request, 413, too_large(settings), dest, None, draw, fallback)
        try:
            body, framing = await read_request_body(request, length, settings)
        except BodyTooLarge:
            return self._local(request, 413, too_large(settings), dest, None, draw, fallback)
        except ClientTooSlow:
            return self._local(request, 408, too_slow(settings), dest, None, draw, fallback)
        except CLIENT_GONE:
            return self._local(
                request, 400, "client closed the request body", dest, None, draw, fallback
            )

        head = self._head(request, uri, dest, framing)
        upstream_started = perf_counter()
        try:
            upstream = await dest.pool.request(
                head.data, body, head_only=request.method == "HEAD", chunked=framing is None
            )
        except UpstreamError as exc:
            failed_at = perf_counter()
            self.metrics.count_upstream_error(exc.upstream, exc.kind)
            dest.breaker.observe(failed_at, None, failed_at - upstream_started)
            if self._may_fall_back(route, dest, fallback, request.method, body, routing):
                assert route is not None
                # The ML upstream did fail: counted for it, measured once with the fallback.
                dest.stats.count(exc.status, failed_at - upstream_started)
                return await self._fall_back(
                    request,
                    route,
                    uri,
                    body,
                    framing,
                    draw,
                    Fallback(exc.kind, dest, upstream_started),
                )
            log.warning(
                "upstream %s failed: %s (request %s)", exc.upstream, exc.detail, head.request_id
            )
            return self._local(
                request,
                exc.status,
                exc.detail,
                dest,
                head.request_id,
                draw,
                fallback,
                upstream_started,
                exc.kind,
            )
        except BodyTooLarge:
            return self._local(
                request, 413, too_large(settings), dest, head.request_id, draw, fallback
            )
        except ClientTooSlow:
            return self._local(
                request, 408, too_slow(settings), dest, head.request_id, draw, fallback
            )
        except ClientGone:
            return self._local(
                request,
                400,
                "client closed the request body",
                dest,
                head.request_id,
                draw,
                fallback,
            )

        upstream_seconds = perf_counter() - upstream_started
        failed = dest.breaker.observe(
            upstream_started + upstream_seconds, upstream.status, upstream_seconds
        )
        if (
            failed
            and route is not None
            and route.fallback_on_5xx
            and self._may_fall_back(route, dest, fallback, request.method, body, routing)
        ):
            dest.stats.count(upstream.status, upstream_seconds)
            upstream.abandon()
            return await self._fall_back(
                request,
                route,
                uri,
                body,
                framing,
                draw,
                Fallback(f"status-{upstream.status}", dest, upstream_started),
            )
        if (
            route is not None
            and route.shadow is not None
            and dest is route.control
            and fallback is None
            and upstream.complete
            and (body is None or isinstance(body, bytes))
            and route.shadow.sampled()
        ):
            treatment = route.treatment
            # The copy's head is built in the background task, off the client's path.
            copy = functools.partial(
                build_request_head,
                request.method,
                uri,
                request.raw_headers,
                request.headers.get("Connection"),
                client_ip=request.remote,
                default_host=treatment.host_header,
                via=_VIA_BYTES,
                body_length=framing,
                request_ids=self.request_ids,
                extra=_SHADOW_HEADER,
            )
            route.shadow.mirror(
                treatment.pool,
                treatment.breaker,
                copy,
                body,
                upstream.status,
                upstream.body(),
                upstream_seconds,
            )
        return await self._respond(
            request,
            upstream,
            dest,
            head.request_id,
            started,
            upstream_started,
            draw,
            fallback,
            route,
        )

    def _head(
        self,
        request: web.BaseRequest,
        target_uri: str,
        dest: Destination,
        framing: int | None,
        extra: bytes = b"",
    ) -> RequestHead:
        if not target_uri.startswith("/") and target_uri != "*":
            target_uri = request.rel_url.raw_path_qs  # absolute-form: send origin-form on
        return build_request_head(
            request.method,
            target_uri,
            request.raw_headers,
            request.headers.get("Connection"),
            client_ip=request.remote,
            default_host=dest.host_header,
            via=_VIA_BYTES,
            body_length=framing,
            request_ids=self.request_ids,
            extra=extra,
        )

    @staticmethod
    def _may_fall_back(
        route: ExperimentRoute | None,
        dest: Destination,
        fallback: Fallback | None,
        method: str,
        body: object,
        routing: Routing,
    ) -> bool:
        """Safe to answer from the control arm instead: a treatment call, not a fallback
        already, a body we still hold, a method (or route) that may be sent twice, and room
        in the retry budget."""
        return (
            route is not None
            and route.fallback
            and dest is route.treatment
            and fallback is None
            and (body is None or isinstance(body, bytes))
            and (method in IDEMPOTENT or route.replayable)
            and routing.budget.try_retry(perf_counter())
        )

    async def _fall_back(
        self,
        request: web.BaseRequest,
        route: ExperimentRoute,
        uri: str,
        body: bytes | AsyncIterator[bytes] | None,
        framing: int | None,
        draw: int,
        fallback: Fallback,
    ) -> web.StreamResponse:
        """Send the request again to the control arm; the answer is marked, and counted in
        the treatment arm it was assigned to (see `Fallback`)."""
        control = route.control
        started = fallback.since
        self.metrics.count_fallback(route.splitter.name, fallback.reason)
        head = self._head(request, uri, control, framing)
        upstream_started = perf_counter()
        try:
            upstream = await control.pool.request(
                head.data, body, head_only=request.method == "HEAD"
            )
        except UpstreamError as exc:
            failed_at = perf_counter()
            self.metrics.count_upstream_error(exc.upstream, exc.kind)
            control.breaker.observe(failed_at, None, failed_at - upstream_started)
            log.warning("fallback to %s failed too: %s", exc.upstream, exc.detail)
            return self._local(
                request,
                exc.status,
                exc.detail,
                control,
                head.request_id,
                draw,
                fallback,
                started,
                exc.kind,
            )
        elapsed = perf_counter() - upstream_started
        control.breaker.observe(upstream_started + elapsed, upstream.status, elapsed)
        return await self._respond(
            request,
            upstream,
            control,
            head.request_id,
            started,
            upstream_started,
            draw,
            fallback,
            route,
        )

    async def _respond(
        self,
        request: web.BaseRequest,
        upstream: UpstreamResponse,
        dest: Destination,
        request_id: str,
        started: float,
        upstream_started: float,
        draw: int,
        fallback: Fallback | None,
        route: ExperimentRoute | None = None,
    ) -> web.StreamResponse:
        if upstream.complete and request.method != "HEAD":
            finished = perf_counter()
            upstream_seconds = finished - upstream_started
            status = upstream.status
            body = upstream.body()
            values = () if dest.extractor is None else dest.extractor.values(body, upstream.headers)
            if route is not None and request.headers.get(validation.HEADER) == validation.VALUE:
                body = validation.with_routing_decision(
                    body,
                    dest.arm,
                    next((v for name, v in values if name == "confidence"), None),
                    route.fallback and route.control.breaker.state in _CLOSED,
                )
            response: web.StreamResponse
            if plain_body(status):  # one write of prebuilt bytes (proxy/respond.py)
                minor = request.version.minor
                keep_alive = request.keep_alive
                head = build_response_head(
                    minor,
                    status_line(minor, status),
                    upstream.headers,
                    len(body),
                    _VIA_BYTES,
                    _routing_fields(dest, fallback),
                    request_id.encode("latin-1"),
                    keep_alive,
                    self._date.now(),
                )
                response = PrebuiltResponse(status, head, body, keep_alive)
            else:
                response = web.Response(status=status, body=body)
                self._copy_headers(upstream, response, dest, request_id, fallback)
            self._finish(
                request_id,
                dest,
                draw,
                fallback,
                upstream.status,
                upstream_started,
                finished,
                "",
                values,
            )
            self.metrics.overhead.observe(perf_counter() - started - upstream_seconds)
            return response
        return await self._stream_response(
            request, upstream, dest, request_id, started, upstream_started, draw, fallback
        )

    def _finish(
        self,
        request_id: str,
        served: Destination,
        draw: int,
        fallback: Fallback | None,
        status: int,
        since: float | None,
        finished: float,
        error: str,
        values: tuple[tuple[str, float], ...],
    ) -> None:
        """The one place a request's outcome is recorded: one record, to every sink. `since`:
        when this exchange began; a fallback's user waited from its first try."""
        if fallback is None:
            assigned = served
        else:
            assigned, since = fallback.assigned, fallback.since
        phase = assigned.phase
        outcome = Outcome(
            request_id,
            assigned,
            served,
            -1 if phase is None else phase.id,
            draw,
            status,
            None if since is None else finished - since,
            error,
            "" if fallback is None else fallback.reason,
            values,
        )
        for sink in self.sinks:
            sink(outcome)

    @staticmethod
    def _copy_headers(
        upstream: UpstreamResponse,
        response: web.StreamResponse,
        dest: Destination,
        request_id: str,
        fallback: Fallback | None,
    ) -> None:
        headers = response.headers
        copy_response_headers(upstream.headers, headers, VIA)
        _routing_headers(headers, dest, fallback)
        if "X-Request-Id" not in headers:
            headers["X-Request-Id"] = request_id

    async def _stream_response(
        self,
        request: web.BaseRequest,
        upstream: UpstreamResponse,
        dest: Destination,
        request_id: str,
        started: float,
        upstream_started: float,
        draw: int,
        fallback: Fallback | None,
    ) -> web.StreamResponse:
        head_ready = perf_counter()
        upstream_head_seconds = head_ready - upstream_started
        response = web.StreamResponse(status=upstream.status)
        self._copy_headers(upstream, response, dest, request_id, fallback)
        length = upstream.content_length()
        if length is not None:
            response.content_length = length
        self._finish(
            request_id,
            dest,
            draw,
            fallback,
            upstream.status,
            upstream_started,
            head_ready,
            "",
            (),
        )
        self.metrics.overhead.observe(head_ready - started - upstream_head_seconds)
        try:
            await response.prepare(request)
            if request.method != "HEAD":
                while chunk := await upstream.read():
                    await response.write(chunk)
            await response.write_eof()
        except UpstreamError as exc:
            # The head went out already: all that can be said now is an abrupt close.
            self.metrics.count_upstream_error(exc.upstream, exc.kind)
            log.warning("upstream %s broke off a response body: %s", exc.upstream, exc.detail)
            if request.transport is not None:
                request.transport.abort()
        except CLIENT_GONE:
            log.debug("client went away while receiving a response")
        finally:
            upstream.abandon()
        return response

    def _local(
        self,
        request: web.BaseRequest,
        status: int,
        error: str,
        dest: Destination | None,
        request_id: str | None,
        draw: int = NO_BUCKET,
        fallback: Fallback | None = None,
        since: float | None = None,
        kind: str = "",
    ) -> web.Response:
        """A response abgate makes itself: small JSON, counted, with the routing headers.
        `since`: when the upstream exchange that failed began (None: no exchange)."""
        if request_id is None:
            request_id = request.headers.get("X-Request-Id") or self.request_ids.next()
        upstream = dest.pool.name if dest is not None else None
        reason = _REASONS.get(status, "error")
        self.metrics.count_local_response(status, reason)
        headers = {"X-Request-Id": request_id, "Via": VIA}
        if dest is not None:
            self._finish(request_id, dest, draw, fallback, status, since, perf_counter(), kind, ())
            _routing_headers(headers, dest, fallback)
        body = orjson.dumps({"error": error, "upstream": upstream, "request_id": request_id})
        response = web.Response(
            status=status, body=body, headers=headers, content_type="application/json"
        )
        if status == 408:
            # The body never came: close after the answer instead of lingering to drain it.
            request.content.feed_eof()
            response.force_close()
        return response


def _routing_headers(
    headers: MutableMapping[str, str], dest: Destination, fallback: Fallback | None
) -> None:
    """What abgate tells the client about the routing of its request: the experiment, the
    arm it was assigned (kept on a fallback), the phase, who answered and why."""
    if dest.phase is not None:
        headers["X-ABGate-Experiment"] = dest.experiment
        headers["X-ABGate-Arm"] = dest.arm if fallback is None else fallback.assigned.arm
        headers["X-ABGate-Phase"] = dest.phase.label
        headers["X-ABGate-Served-By"] = dest.pool.name
    if fallback is not None:
        headers["X-ABGate-Fallback"] = fallback.reason


def _routing_fields(dest: Destination, fallback: Fallback | None) -> bytes:
    """`_routing_headers` as the bytes of a prebuilt head: the assigned arm's experiment and
    arm fields, the phase, who served it (a fallback happens only on experiment routes)."""
    if dest.phase is None:
        return b""
    if fallback is None:
        return dest.arm_fields + dest.phase.field + dest.served_field
    reason = b"X-ABGate-Fallback: " + fallback.reason.encode() + b"\r\n"
    return fallback.assigned.arm_fields + dest.phase.field + dest.served_field + reason


_REASONS = {
    400: "bad_request",
    404: "no_route",
    408: "client_timeout",
    413: "body_too_large",
    502: "bad_gateway",
    503: "circuit_open",
    504: "gateway_timeout",
}
