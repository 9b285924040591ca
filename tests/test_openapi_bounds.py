"""The OpenAPI document says exactly what the control API enforces, on the cases an
adversarial trial found them disagreeing: each body is judged by the document served
(JSON Schema 2020-12) and sent to the live API, and both must agree."""

from __future__ import annotations

import re
import time
from typing import Any

import jsonschema_rs
from aiohttp import ClientSession

from abgate.control.serve import embedded
from tests.servers import make_config

WELCH = {"test": "welch_t", "b": {"n": 10, "mean": 1, "std": 1}}
OUTCOME = {"experiment": "exp", "arm": "control", "metric": "accuracy", "value": 1, "user": "u"}


def _accepts(document: dict[str, Any], path: str, body: Any) -> bool:
    content = document["paths"][path]["post"]["requestBody"]["content"]
    schema = content["application/json"]["schema"]
    validator = jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})
    return bool(validator.is_valid(body))


async def test_the_document_and_the_api_agree_on_bounds(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents)) as running:
        api = running.control_url

        async def post(path: str, body: Any) -> tuple[int, dict[str, Any]]:
            async with session.post(f"{api}{path}", json=body) as response:
                return response.status, await response.json()

        async with session.get(f"{api}/api/openapi.json") as response:
            document = await response.json()

        test = "/api/statistics/significance-test"
        size = "/api/statistics/sample-size"
        cases: list[tuple[str, Any]] = [
            (test, {**WELCH, "a": {"n": 10, "mean": 1, "std": std}})
            for std in (0, 1e-50, 1e-60, -1, 1e100, 1e101)
        ]
        cases += [
            (test, {**WELCH, "a": {"n": 10, "mean": mean, "std": 1}}) for mean in (-1e100, 1e101)
        ]
        cases += [
            (size, {"effect_size": 0.5, "power": power})
            for power in (0.999, 0.999999, 0.999999999, 0.9999999995, 1.0, 0.0)
        ]
        cases += [(size, {"effect_size": 0.5, "alpha": None})]  # optional is not nullable
        cases += [(size, {"effect_size": 0.5, "power": None})]
        cases += [("/api/outcomes", [{**OUTCOME, "phase": None}])]
        cases += [("/api/outcomes", [{**OUTCOME, "phase": 1}])]
        disagreements = []
        for path, body in cases:
            status, answer = await post(path, body)
            documented = _accepts(document, path, body)
            if documented != (status == 200):
                disagreements.append((path, body, documented, status, answer))
        assert disagreements == []

        # `{}`: a test on live data (the current experiment), as the document says and as
        # GET answers; never refused as an inline test without `test`.
        assert _accepts(document, test, {})
        assert await post(test, {}) == await post(test, {"experiment": "exp"})

        # decided_at: a window that moves with the clock, which JSON Schema cannot bound;
        # the document states it (x-abgate-window-seconds) and the API holds to it.
        item = document["components"]["schemas"]["OutcomeItem"]["properties"]["decided_at"]
        window = item["x-abgate-window-seconds"]
        now = time.time()
        for decided_at, accepted in (
            (now - window["before"] - 3600, False),
            (now - window["before"] + 3600, True),
            (now - 10, True),
            (now + window["after"] - 20, True),
            (now + window["after"] + 3600, False),
        ):
            status, answer = await post("/api/outcomes", [{**OUTCOME, "decided_at": decided_at}])
            assert (status == 200) is accepted, (decided_at - now, answer)
            if not accepted:
                assert answer["error"].startswith("[0].decided_at: expected the decision's time")

    # No null shown as a default (a field left out is not the value null), and every
    # component named by its model, never by a Python module path.
    assert '"default": null' not in str(document).replace("None", "null").replace("'", '"')
    for name in document["components"]["schemas"]:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", name), name
