"""A demo decision agent: deterministic rules or a pretend ML model, behind one HTTP endpoint.

    GET|POST /api/agent/{agent}/decide   -> {"source", "agent", "decision", "confidence", ...}
    GET|POST /api/agent/{agent}/...      the same (any path under an agent: a route's prefix)
    GET|POST /api/agent/decision         the same, for an agent named "default"
    GET|POST /admin/behaviour            -> read or change added latency and failure share
    GET /health

Used by `make run`, the tests and the benchmarks. Behaviour can be set at start
(--latency-ms, --failure-rate) or while running (POST /admin/behaviour), so a demo can make the
ML agent slow or failing and watch abgate's numbers move.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sys
from dataclasses import dataclass

import orjson
from aiohttp import web

DECISIONS = ("approve", "review", "reject")


@dataclass(slots=True)
class Behaviour:
    latency_ms: float = 0.0
    failure_rate: float = 0.0  # share of requests answered 500


BEHAVIOUR = web.AppKey("behaviour", Behaviour)
KIND = web.AppKey("kind", str)
RNG = web.AppKey("rng", random.Random)


def _user(request: web.Request, body: dict[str, object]) -> str:
    user = request.headers.get("X-User-Id") or body.get("user_id") or request.query.get("user")
    return str(user) if user is not None else "anonymous"


def deterministic_decision(user: str, agent: str) -> tuple[str, float]:
    digest = hashlib.sha256(f"{agent}:{user}".encode()).digest()
    return DECISIONS[digest[0] % 3], 1.0


def ml_decision(user: str, agent: str, rng: random.Random) -> tuple[str, float]:
    # Agrees with the rules most of the time, as a decent model would.
    rules, _ = deterministic_decision(user, agent)
    if rng.random() < 0.85:
        return rules, round(0.7 + rng.random() * 0.3, 4)
    return DECISIONS[rng.randrange(3)], round(0.4 + rng.random() * 0.3, 4)


async def decide(request: web.Request) -> web.Response:
    behaviour = request.app[BEHAVIOUR]
    rng = request.app[RNG]
    raw = await request.read() if request.can_read_body else b""
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    if not isinstance(body, dict):
        body = {}
    if behaviour.latency_ms:
        await asyncio.sleep(behaviour.latency_ms / 1000)
    kind = request.app[KIND]
    if behaviour.failure_rate and rng.random() < behaviour.failure_rate:
        return web.json_response({"error": "injected failure", "source": kind}, status=500)
    agent = request.match_info.get("agent", "default")
    user = _user(request, body)
    if kind == "ml":
        decision, confidence = ml_decision(user, agent, rng)
    else:
        decision, confidence = deterministic_decision(user, agent)
    payload = {
        "source": kind,
        "agent": agent,
        "user": user,
        "decision": decision,
        "confidence": confidence,
    }
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


async def behaviour_handler(request: web.Request) -> web.Response:
    behaviour = request.app[BEHAVIOUR]
    if request.method == "POST":
        update = orjson.loads(await request.read() or b"{}")
        if not isinstance(update, dict):
            return web.json_response({"error": "expected a JSON object"}, status=400)
        latency = float(update.get("latency_ms", behaviour.latency_ms))
        failure = float(update.get("failure_rate", behaviour.failure_rate))
        if latency < 0 or not 0 <= failure <= 1:
            return web.json_response(
                {"error": "latency_ms >= 0, 0 <= failure_rate <= 1"}, status=400
            )
        behaviour.latency_ms, behaviour.failure_rate = latency, failure
    return web.json_response(
        {"latency_ms": behaviour.latency_ms, "failure_rate": behaviour.failure_rate}
    )


async def health(request: web.Request) -> web.Response:
    return web.Response(text="OK")


def create_app(kind: str, behaviour: Behaviour | None = None, seed: int = 0) -> web.Application:
    if kind not in ("deterministic", "ml"):
        raise ValueError(f"kind must be deterministic or ml, got {kind!r}")
    app = web.Application()
    app[KIND] = kind
    app[BEHAVIOUR] = behaviour or Behaviour()
    app[RNG] = random.Random(seed)
    for method in ("GET", "POST"):
        app.router.add_route(method, "/api/agent/decision", decide)
        app.router.add_route(method, "/api/agent/{agent}/{action:.*}", decide)
    app.router.add_route("GET", "/admin/behaviour", behaviour_handler)
    app.router.add_route("POST", "/admin/behaviour", behaviour_handler)
    app.router.add_get("/health", health)
    return app


async def serve(kind: str, host: str, port: int, behaviour: Behaviour, seed: int) -> None:
    runner = web.AppRunner(create_app(kind, behaviour, seed), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        print(f"demo agent ({kind}) listening on http://{host}:{bound}", flush=True)
        await asyncio.Event().wait()  # until the process is stopped
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=["deterministic", "ml"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    behaviour = Behaviour(args.latency_ms, args.failure_rate)
    try:
        import uvloop

        uvloop.run(serve(args.kind, args.host, args.port, behaviour, args.seed))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
