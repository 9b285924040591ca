"""Sticky bucketing: GrowthBook v2 values, stickiness and monotonic growth (hypothesis)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abgate.config.model import ArmConfig, ExperimentConfig, StickySource, WhenMissing
from abgate.proxy.hashing import fnv1a32, gb_hash_v2

# From GrowthBook's SDK test suite (tests/cases.json, "hash", version 2) and one experiment case.
GROWTHBOOK_V2 = [
    ("seed", "a", 0.0505),
    ("seed", "b", 0.2696),
    ("foo", "ab", 0.2575),
    ("foo", "def", 0.2019),
    ("89123klj", "8952klfjas09ujkasdf", 0.124),
    ("90850943850283058242805", "123", 0.7516),
    ("()**(%$##$%#$#", '___)((*":&', 0.0128),
    ("feature", "123", 0.5231),
]

keys = st.text(min_size=1, max_size=64)
percent_bp = st.integers(min_value=0, max_value=10_000)


@pytest.mark.parametrize(("seed", "key", "expected"), GROWTHBOOK_V2)
def test_matches_growthbook_v2(seed: str, key: str, expected: float) -> None:
    assert gb_hash_v2(seed, key) == expected


# Beyond the Basic Multilingual Plane the JavaScript and Python SDKs hash UTF-16 code units
# (an emoji is two surrogates); so does abgate.
NON_ASCII_IDS = [
    "😀",
    "user-😀-1",
    "\U0001d518\U0001d52b\U0001d526",
    "Ünïcödé",
    "日本語",
    "a\U0010ffffb",
    "é😀é",
]


@pytest.mark.parametrize("key", NON_ASCII_IDS)
def test_non_ascii_ids_bucket_as_the_growthbook_package(key: str) -> None:
    from growthbook.core import gbhash

    for seed in ("exp", "ml-agent-rollout", "😀seed"):
        assert gb_hash_v2(seed, key) == gbhash(seed, key, 2), (seed, key)


@settings(max_examples=300, deadline=None)
@given(seed=st.text(max_size=16), key=st.text(min_size=1, max_size=32))
def test_any_text_buckets_as_the_growthbook_package(seed: str, key: str) -> None:
    from growthbook.core import gbhash

    assert gb_hash_v2(seed, key) == gbhash(seed, key, 2)


def test_fnv1a32_known_values() -> None:
    # The FNV-1a 32-bit reference values.
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


def splitter(
    percentage_bp: int,
    when_missing: WhenMissing = "random",
    sticky: tuple[StickySource, ...] = (StickySource("header", "x-user-id"),),
    seed: int = 1,
):
    from abgate.proxy.split import Splitter

    config = ExperimentConfig(
        "exp",
        ArmConfig("c", "c"),
        ArmConfig("t", "t"),
        sticky,
        when_missing,
        "exp",
        percentage_bp,
        True,
        True,
        None,
        (),
    )
    return Splitter(config, percentage_bp, random.Random(seed))


def make_request(target: str, headers: dict[str, str]) -> Any:
    """A request as the connection builds it from a parsed head (no socket)."""
    from abgate.proxy.request import ClientRequest

    raw = [(name.encode(), value.encode()) for name, value in headers.items()]
    return ClientRequest(None, "GET", target, 1, raw)


def request_for(user: str | None = None, path: str = "/api/x") -> Any:
    headers = {"X-User-Id": user} if user is not None else {}
    return make_request(path, headers)


def carrying(user: str) -> Any:
    """A request carrying `user` in the sticky header."""
    return make_request("/api/x", {"X-User-Id": user})


@settings(max_examples=100, deadline=None)
@given(users=st.lists(keys, min_size=1, max_size=50, unique=True), low=percent_bp, high=percent_bp)
def test_raising_the_percentage_only_moves_users_to_treatment(
    users: list[str], low: int, high: int
) -> None:
    """Through the splitter as the flag table drives it (its threshold raised in place, the
    0% and 100% shortcuts included): nobody in treatment ever goes back to control."""
    low, high = min(low, high), max(low, high)
    split = splitter(low)
    before = {user for user in users if split.is_treatment(carrying(user))}
    split.threshold = high
    after = {user for user in users if split.is_treatment(carrying(user))}
    assert before <= after


@pytest.mark.parametrize("percentage_bp", [100, 500, 2500, 5000, 9000])
def test_the_share_in_treatment_is_the_percentage(percentage_bp: int) -> None:
    split = splitter(percentage_bp)
    users = 20_000
    treated = sum(split.is_treatment(carrying(f"user-{i}")) for i in range(users))
    assert abs(treated / users - percentage_bp / 10_000) < 0.01


@settings(max_examples=50, deadline=None)
@given(
    user=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40
    ),
    percentage=percent_bp,
)
def test_same_user_always_same_arm(user: str, percentage: int) -> None:
    split = splitter(percentage)
    first = split.is_treatment(request_for(user))
    assert all(split.is_treatment(request_for(user)) == first for _ in range(5))
    # ... and the arm is exactly GrowthBook's verdict: n < percentage / 100.
    assert first == (gb_hash_v2("exp", user) < percentage / 10_000)


def test_threshold_change_applies_to_next_request() -> None:
    split = splitter(0)
    requests = {f"user-{i}": request_for(f"user-{i}") for i in range(1000)}
    assert not any(split.is_treatment(r) for r in requests.values())
    previous: set[str] = set()
    for step in (500, 2500, 5000, 7500, 10_000):  # the rollout ladder: 5 -> 25 -> ... -> 100%
        split.threshold = step
        now = {user for user, r in requests.items() if split.is_treatment(r)}
        assert previous <= now  # nobody moves back to control
        assert abs(len(now) / len(requests) - step / 10_000) < 0.04
        previous = now
    assert len(previous) == len(requests)


def test_missing_key_policies() -> None:
    # (client_ip is tested through the real proxy, where requests have a peer address.)
    assert not splitter(9999, "control").is_treatment(request_for(None))
    seeded = splitter(1000, "random", seed=42)
    share = sum(seeded.is_treatment(request_for(None)) for _ in range(1000)) / 1000
    assert 0.08 <= share <= 0.12


def test_sticky_sources_in_order() -> None:
    sources = (
        StickySource("header", "x-user-id"),
        StickySource("cookie", "uid"),
        StickySource("query", "user"),
        StickySource("client_ip", ""),
    )
    split = splitter(5000, sticky=sources)
    header = make_request("/x?user=q", {"X-User-Id": "h", "Cookie": "uid=c"})
    cookie = make_request("/x?user=q", {"Cookie": "a=1; uid=c"})
    query = make_request("/x?user=q", {})
    assert split.sticky_key(header) == "h"
    assert split.sticky_key(cookie) == "c"
    assert split.sticky_key(query) == "q"

    # client_ip: the connection's peer, never what X-Forwarded-For claims (README's table)
    from abgate.proxy.request import ClientRequest

    forwarded = [(b"X-Forwarded-For", b"203.0.113.9")]
    peer = ClientRequest(None, "GET", "/x", 1, forwarded, remote="10.0.0.7")
    assert split.sticky_key(peer) == "10.0.0.7"
    assert split.sticky_key(make_request("/x", {"X-Forwarded-For": "203.0.113.9"})) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api/x", None),
        ("/api/x?a=../b", None),  # the query is not a path
        ("/a%20b/c", None),
        ("/raw/../h/ok", ("/h/ok", "/h/ok")),
        ("/raw/%2e%2e/%2E%2e/secret", ("/secret", "/secret")),
        ("/a/./b/../c?q=1", ("/a/c", "/a/c?q=1")),
        ("/a/b/..", ("/a/", "/a/")),
        ("/../../etc", ("/etc", "/etc")),
        ("/a/%2e/b%20c", ("/a/b c", "/a/b%20c")),
    ],
)
def test_paths_are_normalised_before_matching(raw: str, expected: object) -> None:
    from abgate.proxy.paths import normalize_target

    assert normalize_target(raw) == expected


def test_encoded_slash_with_dot_segments_is_refused() -> None:
    from abgate.proxy.paths import PathRefused, normalize_target

    with pytest.raises(PathRefused):
        normalize_target("/raw/..%2f..%2fsecret")
    with pytest.raises(PathRefused):
        normalize_target("/raw%2f..%2fsecret")  # no literal dot-segment, but one once decoded
    assert normalize_target("/ids/a%2Fb") is None  # an encoded slash alone is left alone


def test_the_draw_carries_the_growthbook_bucket_and_a_mixed_user_hash() -> None:
    from abgate.proxy.hashing import BUCKET_MASK, bucket, fmix32, fnv1a32, user_draw, user_of

    seed = fnv1a32("exp")
    for key in ("a", "user-1", "user-2", "😀x", "x" * 300):
        draw = user_draw(seed, key)
        assert draw & BUCKET_MASK == bucket(seed, key)  # the split is GrowthBook's
        assert user_of(draw) == fmix32(fnv1a32(key, seed))
    assert user_of(-1) is None  # NO_BUCKET
    assert user_of(1234) is None  # a random draw for a keyless request: no user
