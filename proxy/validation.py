"""`X-Test-Mode: validation`: abgate's routing decision added to a JSON answer, for people
checking a deployment by hand (`curl -H 'X-Test-Mode: validation' ... | jq .routing_decision`).

Only when the request asks, only on experiment routes, only for a complete answer whose
body is a JSON object; any other body (not JSON, compressed, streamed) passes untouched, as
every body does without the header."""

from __future__ import annotations

import orjson

HEADER = "X-Test-Mode"
VALUE = "validation"
FIELD = "routing_decision"


def with_routing_decision(
    body: bytes, source: str, confidence: float | None, fallback_available: bool
) -> bytes:
    """`body` with `routing_decision` added: the arm that served the answer, the answer's
    confidence where a metric reads one, and whether a fallback to the control arm is
    configured and its breaker closed. Unchanged when the body is not a JSON object."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(document, dict):
        return body
    document[FIELD] = {
        "source": source,
        "confidence": confidence,
        "fallback_available": fallback_available,
    }
    return orjson.dumps(document)
