"""A refusal in the control API's own words, mapped once at its boundary: the key path, a
short message, the value refused as JSON writes it and cut short (never Python's repr,
never pydantic's text, never a megabyte echoed); a duplicate key refused, naming it; a
body over the limit told the limit, and a batch of outcomes how to split."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession

from abgate.config.fields import SHOWN
from abgate.control.http import MAX_BODY, ApiError, parse_json
from abgate.control.payloads import validate
from abgate.control.serve import embedded
from abgate.control.stats_payloads import LiveTestBody, MeansSampleSizeBody
from tests.servers import make_config

OUTCOME = {"experiment": "exp", "arm": "control", "metric": "accuracy", "value": 1, "user": "u"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"experiment": 5}, "experiment: expected a string, got 5"),
        ({"experiment": True}, "experiment: expected a string, got true"),
        ({"metric": {"a": None}}, 'metric: expected a string, got {"a":null}'),
        (
            {"experiment": ["x" * 1000]},
            f'experiment: expected a string, got ["{"x" * (SHOWN - 2)}... (1,004 characters)',
        ),
    ],
)
def test_pydantic_errors_in_our_words(body: dict[str, Any], error: str) -> None:
    with pytest.raises(ApiError) as refused:
        validate(LiveTestBody, body)
    assert refused.value.message == error


def test_a_bound_in_our_words() -> None:
    with pytest.raises(ApiError) as refused:
        validate(MeansSampleSizeBody, {"effect_size": 0.5, "treatment_share": 1.5})
    assert refused.value.message == "treatment_share: expected a number between 0 and 1, got 1.5"


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"percentage": 5, "percentage": 50}', "percentage"),
        (b'[{"a": 1}, {"b": {"c": 1, "d": 2, "c": 3}}]', "c"),
        (b'{"k\\u00e9": 1, "k\xc3\xa9": 2}', "k\u00e9"),  # the same key, escaped or not
    ],
)
def test_a_duplicate_key_is_refused_naming_it(raw: bytes, key: str, exact: bool) -> None:
    with pytest.raises(ApiError) as refused:
        parse_json(raw, exact=exact)
    assert refused.value.status == 400
    assert refused.value.message == (
        f"request body: the key {orjson.dumps(key).decode()} appears twice in one object"
    )


def test_distinct_keys_pass() -> None:
    assert parse_json(b'[{"a": 1, "b": {"a": 2}}, {"a": 3}]') == [
        {"a": 1, "b": {"a": 2}},
        {"a": 3},
    ]


async def test_on_the_live_api(session: ClientSession, agents: dict[str, str]) -> None:
    async with embedded(make_config(agents)) as running:
        api = running.control_url

        async def post(path: str, data: bytes) -> tuple[int, str]:
            headers = {"Content-Type": "application/json"}
            body = io.BytesIO(data)  # a large body as a stream, as aiohttp asks
            async with session.post(f"{api}{path}", data=body, headers=headers) as response:
                return response.status, (await response.json())["error"]

        status, error = await post("/api/flags/exp", b'{"percentage": 5, "percentage": 50}')
        assert (status, error) == (
            400,
            'request body: the key "percentage" appears twice in one object',
        )

        for limit in ("9" * 5000, "0", "10001", "x"):  # a 5000-digit limit was a 500
            async with session.get(f"{api}/api/flags/exp/history?limit={limit}") as response:
                assert response.status == 400
                assert (await response.json())["error"] == (
                    "limit: expected a whole number from 1 to 10000"
                )

        huge = "a" * 200_000  # echoed cut short, as JSON writes it
        status, error = await post("/api/outcomes", orjson.dumps([{**OUTCOME, "arm": huge}]))
        assert status == 400
        assert error.startswith("[0].arm: expected one of control, treatment")
        assert f'got "{"a" * (SHOWN - 1)}..." (200,000 characters)' in error
        assert len(error) < 300

        batch = orjson.dumps([OUTCOME] * (MAX_BODY // len(orjson.dumps(OUTCOME)) + 10))
        status, error = await post("/api/outcomes", batch)
        assert status == 413
        assert error.startswith(
            "request body over the limit of 1 MiB (1,048,576 bytes): split the batch into 2 or "
            "more (at most 10,000 outcomes a batch; some 7,489 fit at 140 bytes an outcome)"
        )
        status, error = await post("/api/flags/exp", b'{"percentage": "' + b"5" * MAX_BODY + b'"}')
        assert (status, error) == (413, "request body over the limit of 1 MiB (1,048,576 bytes)")


LONG = "n" * 6000  # a name no config holds, echoed cut short (SHOWN characters and the length)
CUT = f'"{"n" * (SHOWN - 1)}..." (6,000 characters)'


async def test_long_names_are_echoed_cut_short(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents)) as running:
        api = running.control_url
        for method, path, body, error in [
            ("GET", f"/api/flags/{LONG}", None, f"unknown flag {CUT}"),
            ("GET", f"/api/flags/{LONG}/history", None, f"unknown flag {CUT}"),
            ("GET", f"/api/experiments/{LONG}", None, f"unknown experiment {CUT}"),
            ("GET", f"/api/rollouts/{LONG}", None, f"unknown experiment {CUT}"),
            ("GET", f"/api/metrics/{LONG}/comparison", None, f"unknown experiment {CUT}"),
            ("GET", f"/api/metrics/{LONG}/stability", None, f"unknown experiment {CUT}"),
            ("POST", f"/api/breakers/{LONG}", {"state": "forced_open"}, f"unknown upstream {CUT}"),
            ("POST", "/api/rollback", {"experiments": [LONG]}, f"unknown flag {CUT}"),
            ("GET", "/api/flags/nope", None, 'unknown flag "nope"'),
        ]:
            async with session.request(method, f"{api}{path}", json=body) as response:
                assert (response.status, (await response.json())["error"]) == (404, error), path
        huge = "h" * 8000
        async with session.get(f"{api}/api/flags", headers={"Host": huge}) as response:
            assert response.status == 403
            error = (await response.json())["error"]
        assert error.startswith(f'Host "{"h" * (SHOWN - 1)}..." (8,000 characters) is not this')
        assert len(error) < 250


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b'{"x": "ab\xff"}', "request body is not UTF-8: byte 0xff at position 9"),
        (b'{"a": "\xc3"}', "request body is not UTF-8: byte 0xc3 at position 7"),
    ],
)
def test_a_body_not_utf8_says_where(raw: bytes, error: str, exact: bool) -> None:
    with pytest.raises(ApiError) as refused:
        parse_json(raw, exact=exact)
    assert (refused.value.status, refused.value.message) == (400, error)


def test_a_number_too_long_is_said_so() -> None:
    with pytest.raises(ApiError) as refused:
        parse_json(b'{"percentage": ' + b"1" * 5000 + b"}", exact=True)
    assert refused.value.message == "request body: a number is too long (at most 4,300 digits)"


def test_a_number_beyond_a_double_is_said_so_in_our_words() -> None:
    """orjson's own "number is infinity when parsed as double" reached a client (trial)."""
    with pytest.raises(ApiError) as refused:
        parse_json(b'{"amount": -1e999}')
    assert (refused.value.status, refused.value.message) == (
        400,
        "request body: a number at position 11 is too large for a double (at most about 1.8e308)",
    )


async def test_numbers_shown_as_sent(session: ClientSession, agents: dict[str, str]) -> None:
    async with embedded(make_config(agents)) as running:
        api = running.control_url
        outcome = {**OUTCOME, "experiment": "exp"}
        for path, body, error in [
            (
                "/api/outcomes",
                [{**outcome, "value": 2}],
                "[0].value: accuracy is binary: expected 0, 1, true or false, got 2",
            ),
            (
                "/api/outcomes",
                [{**outcome, "decided_at": 1}],
                "[0].decided_at: expected the decision's time in Unix seconds, within a year "
                "before now and 60s after, got 1",
            ),
            (
                "/api/statistics/significance-test",
                {
                    "test": "welch_t",
                    "a": {"n": 10, "mean": 1, "std": -1},
                    "b": {"n": 10, "mean": 1, "std": 1},
                },
                "a.std: must not be negative, got -1",
            ),
        ]:
            async with session.post(f"{api}{path}", json=body) as response:
                assert response.status == 400
                assert (await response.json())["error"].startswith(error)


async def test_refusals_say_the_rule_and_the_field(
    session: ClientSession, agents: dict[str, str]
) -> None:
    """A string refused for its length says the length rule, a missing field that it is
    required, and a sample size out of reach names the field that puts it there."""
    async with embedded(make_config(agents)) as running:
        api = running.control_url
        rule = "[0].user: expected the sticky key's value, a string of 1 to 1,000 characters"
        no_experiment = {k: v for k, v in OUTCOME.items() if k != "experiment"}
        for path, body, error in [
            ("/api/outcomes", [{**OUTCOME, "user": ""}], f'{rule}, got ""'),
            (
                "/api/outcomes",
                [{**OUTCOME, "user": "u" * 1001}],
                f'{rule}, got "{"u" * (SHOWN - 1)}..." (1,001 characters)',
            ),
            (
                "/api/outcomes",
                [no_experiment],
                "[0].experiment: required (or a request_id to read it from)",
            ),
            (
                "/api/statistics/sample-size",
                {"effect_size": 0.001, "treatment_share": 0.999999999},
                "treatment_share: 0.999999999 leaves the smaller arm too few samples: the "
                "sequential test would need over 1,000,000,000,000 samples (equal arms would not)",
            ),
            (
                "/api/statistics/sample-size",
                {"baseline_rate": 0.5, "minimum_detectable_effect": 2.2e-6},  # the sequential size
                "minimum_detectable_effect: too small to detect: it needs over "
                "1,000,000,000,000 samples",
            ),
        ]:
            async with session.post(f"{api}{path}", json=body) as response:
                assert (response.status, (await response.json())["error"]) == (400, error)


async def test_integers_as_json_schema_reads_them(
    session: ClientSession, agents: dict[str, str]
) -> None:
    """A whole number written 2.0 is an integer (JSON Schema's `integer`), in every integer
    field alike; 2.5 is not. A stage approved has at most two decimals, as a flag write; an
    empty body to the significance test is the GET's test, as the document says."""
    async with embedded(make_config(agents)) as running:
        api = running.control_url

        async def post(path: str, body: Any) -> tuple[int, Any]:
            data = orjson.dumps(body) if body is not None else b""
            async with session.post(f"{api}{path}", data=data) as response:
                return response.status, await response.json()

        welch = {"test": "welch_t", "b": {"n": 10, "mean": 1, "std": 1}}
        status, answer = await post(
            "/api/statistics/significance-test", {**welch, "a": {"n": 2.0, "mean": 1, "std": 1}}
        )
        assert (status, answer["n"]) == (200, {"a": 2, "b": 10})
        status, answer = await post(
            "/api/statistics/significance-test", {**welch, "a": {"n": 2.5, "mean": 1, "std": 1}}
        )
        assert (status, answer["error"]) == (
            400,
            "a.n: expected a whole number from 2 to 1,000,000,000,000, got 2.5",
        )
        assert await post("/api/outcomes", [{**OUTCOME, "phase": 1.0}]) == (200, {"accepted": 1})
        status, answer = await post("/api/outcomes", [{**OUTCOME, "phase": 1.5}])
        assert (status, answer["error"]) == (
            400,
            "[0].phase: expected the X-ABGate-Phase header's whole number, got 1.5",
        )
        status, answer = await post("/api/flags/exp", {"percentage": 20, "expected_version": 1.0})
        assert (status, answer["version"]) == (200, 2)

        status, answer = await post("/api/rollouts/exp/approve", {"stage": 50.001})
        assert (status, answer["error"]) == (
            400,
            "stage: at most two decimals (0.01% steps), got 50.001",
        )
        empty = await post("/api/statistics/significance-test", None)
        async with session.get(f"{api}/api/statistics/significance-test") as response:
            assert empty == (response.status, await response.json())


@pytest.mark.parametrize(
    ("a", "b", "rate"),
    [((10, 0), (10, 0), 0), ((1, 0), (1, 1), 0), ((5, 5), (5, 2), 1)],
)
async def test_no_detectable_effect_without_variance(
    session: ClientSession,
    agents: dict[str, str],
    a: tuple[int, int],
    b: tuple[int, int],
    rate: int,
) -> None:
    """A minimum detectable effect of 0 would say any effect is detectable: null, and why."""
    body = {
        "test": "two_proportion",
        "a": {"n": a[0], "successes": a[1]},
        "b": {"n": b[0], "successes": b[1]},
    }
    async with embedded(make_config(agents)) as running:
        url = f"{running.control_url}/api/statistics/significance-test"
        async with session.post(url, json=body) as response:
            assert response.status == 200
            answer = await response.json()
    assert answer["minimum_detectable_effect"] == {
        "absolute": None,
        "power": 0.8,
        "reason": f"no variance in the data (a's rate, which sizes it, is {rate})",
    }


def test_unknown_fields_named_at_most_ten() -> None:
    """A body of 5,000 unknown keys is refused in a line, not a 34 KB list."""
    body = {f"k{i:04}": 1 for i in range(5000)}
    with pytest.raises(ApiError) as refused:
        validate(MeansSampleSizeBody, body)
    named = ", ".join(f"k{i:04}" for i in range(10))
    assert refused.value.message.startswith(f"unknown field(s): {named} and 4,990 more (expected:")
    assert len(refused.value.message) < 250
