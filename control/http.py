"""What every control API handler shares: JSON errors, JSON bodies (a duplicate key
refused, over MAX_BODY refused naming the limit), a refused value shown cut short, bearer
auth."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from abgate.config.errors import AbgateError
from abgate.config.fields import shown
from abgate.state.errors import StoreUnavailable

if TYPE_CHECKING:
    from abgate.control.reload import Reloader
    from abgate.control.rollout.controller import RolloutController
    from abgate.control.stats_worker import StatsWorker

log = logging.getLogger("abgate.control")
TOKEN = web.AppKey("token", str)
# The statistics worker (scipy) is imported only by processes that evaluate statistics.
WORKER: web.AppKey[StatsWorker] = web.AppKey("stats_worker")
CONTROLLER: web.AppKey[RolloutController] = web.AppKey("rollout_controller")
RELOADER: web.AppKey[Reloader] = web.AppKey("reloader")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(AbgateError):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra  # more fields of the JSON answer (a 409 carries the current flag)


def json_response(data: Any, status: int = 200) -> web.Response:
    try:
        body = orjson.dumps(data)
    except TypeError:  # a string that is not valid Unicode (echoed input): escaped, not a 500
        body = json.dumps(data, ensure_ascii=True, default=str).encode()
    return web.Response(body=body, status=status, content_type="application/json")


MAX_DEPTH = 32  # nesting of a request body: no control API body needs more than a few
MAX_BODY = 1024**2  # bytes of a request body (aiohttp's client_max_size)


def too_large(limit: int = MAX_BODY) -> str:
    return f"request body over the limit of {limit / 1024**2:g} MiB ({limit:,} bytes)"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _exact_number(text: str) -> Decimal:
    try:
        number = Decimal(text)
    except ArithmeticError:  # InvalidOperation: beyond Decimal's exponent range
        number = Decimal("NaN")
    if not number.is_finite():
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


def parse_json(raw: bytes, *, exact: bool = False) -> Any:
    """A request body as JSON, every failure an ApiError: 400 for what is not JSON (numbers
    out of range, strings that are not Unicode included), 413 for nesting deeper than
    MAX_DEPTH. `exact` keeps decimal numbers as written (Decimal), so
    `99.99999999999999999` is not first rounded to 100 by a float."""
    try:
        if exact:
            body = json.loads(
                raw,
                parse_float=_exact_number,
                parse_constant=_no_constant,
                object_pairs_hook=_unique_keys,
            )
        else:
            body = orjson.loads(raw)
            if b'"' in raw:  # keys: orjson keeps the last of two; refused as Python's json sees
                json.loads(raw, object_pairs_hook=_no_duplicate)
    except DuplicateKey as exc:
        raise ApiError(
            400, f"request body: the key {shown(exc.key)} appears twice in one object"
        ) from None
    except RecursionError:
        raise ApiError(413, f"request body nested too deep (at most {MAX_DEPTH} levels)") from None
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            raise ApiError(
                413, f"request body nested too deep (at most {MAX_DEPTH} levels)"
            ) from None
        raise _not_json(raw, exc) from None
    except ValueError as exc:
        raise _not_json(raw, exc) from None
    _check(body, "", 0)
    return body


def _not_json(raw: bytes, exc: ValueError) -> ApiError:
    """Why a body is not JSON, in our words where Python's would show (a codec's, or
    sys.set_int_max_str_digits())."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return ApiError(
            400, f"request body is not UTF-8: byte 0x{raw[bad.start]:02x} at position {bad.start}"
        )
    if "integer string conversion" in str(exc):
        limit = sys.get_int_max_str_digits()
        return ApiError(400, f"request body: a number is too long (at most {limit:,} digits)")
    if isinstance(exc, orjson.JSONDecodeError) and "infinity" in exc.msg:
        return ApiError(
            400,
            f"request body: a number at position {exc.pos} is too large for a double "
            "(at most about 1.8e308)",
        )
    if isinstance(exc, json.JSONDecodeError):  # orjson's too: where, then what
        what = exc.msg[:1].lower() + exc.msg[1:]
        return ApiError(
            400, f"request body is not valid JSON at line {exc.lineno}, column {exc.colno}: {what}"
        )
    return ApiError(400, f"request body is not valid JSON: {exc}")


class DuplicateKey(AbgateError, ValueError):
    """A key given twice in one JSON object of a request body (a ValueError, as json's own
    refusals are, so the parser's hooks may raise it)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate(pairs: list[tuple[str, Any]]) -> None:
    """Only checks: a duplicate key anywhere in the body is refused, not silently the last
    one kept (orjson, and Python's json by default, keep the last). A set of the keys per
    object: a 1 MiB batch of outcomes checks in about 10 ms (orjson parses it in 3)."""
    if len(pairs) > 1 and len({key for key, _ in pairs}) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    _no_duplicate(pairs)
    return dict(pairs)


def _check(value: Any, where: str, depth: int) -> None:
    """No deeper than MAX_DEPTH; every string valid Unicode (Python's json takes a lone
    surrogate escape such as \\ud800, which no store can encode)."""
    if depth > MAX_DEPTH:
        raise ApiError(413, f"request body nested too deep (at most {MAX_DEPTH} levels)")
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    400, f"{where or 'body'}: not valid Unicode (a lone surrogate)"
                ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check(key, where or "body", depth + 1)
            _check(item, f"{where}.{key}" if where else str(key), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]", depth + 1)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response({"error": exc.message, **exc.extra}, exc.status)
    except StoreUnavailable as exc:  # the one place a store outage becomes an answer
        return json_response({"error": f"store unavailable, nothing was changed: {exc}"}, 503)
    except web.HTTPRequestEntityTooLarge:  # over client_max_size: say the limit
        return json_response({"error": too_large()}, 413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_response({"error": exc.reason}, exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:  # a bug: still JSON, and the server goes on
        log.exception("control API: %s %s failed", request.method, request.path)
        return json_response({"error": f"internal error: {type(exc).__name__}"}, 500)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_ONLY = web.AppKey("loopback_only", bool)


def _loopback_name(host_header: str) -> bool:
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


CROSS_SITE_OK = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values a write may carry


def cross_origin_problem(request: web.BaseRequest) -> str | None:
    """Why a write comes from another site, or None. Judged as Go's net/http
    CrossOriginProtection judges it: a browser sends Sec-Fetch-Site on every request
    (`same-origin`, `same-site`, `cross-site`, or `none` for one the user typed), and Origin
    on every cross-origin POST; curl and scripts send neither, and pass."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site.lower() in CROSS_SITE_OK:
            return None
        return f"cross-site write refused (Sec-Fetch-Site: {site[:40]})"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return f"cross-origin write from {shown(origin)} refused"
    return None


@web.middleware
async def same_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What keeps a web page in the operator's browser from driving the control API: on a
    loopback listener the Host must be a loopback name (a DNS-rebinding page sends its own
    name), and a write must not come from another site (`cross_origin_problem`). The
    Content-Type is not what makes a write safe: a body is read as JSON whatever it says,
    so `curl -d '{...}'` (form-encoded, as curl labels it) works as written."""
    if request.app[LOOPBACK_ONLY] and not _loopback_name(request.host):
        raise ApiError(
            403,
            f"Host {shown(request.host)} is not this loopback control API "
            "(DNS rebinding?): use 127.0.0.1, [::1] or localhost",
        )
    if request.method not in SAFE_METHODS:
        problem = cross_origin_problem(request)
        if problem is not None:
            raise ApiError(403, problem)
    return await handler(request)


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mutating calls need the token when one is configured; compared in constant time."""
    token = request.app[TOKEN]
    if token and request.method not in ("GET", "HEAD", "OPTIONS"):
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        # Header bytes that are not UTF-8 arrive as surrogate escapes: back to those bytes.
        given = value.encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, token.encode()):
            raise ApiError(401, "missing or wrong bearer token")
    return await handler(request)
