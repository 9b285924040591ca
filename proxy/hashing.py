"""GrowthBook-compatible sticky bucketing (hash version 2). Pure functions, no I/O.

    n = fnv1a32(str(fnv1a32(seed + key))) % 10000 / 10000      (growthbook core.py::gbhash)

A request goes to treatment iff n < percentage / 100, i.e. iff the integer bucket
`fnv1a32(...) % 10000` is below the percentage in basis points. FNV-1a is a streaming hash, so
the state after the seed is computed once per experiment and only the key is hashed per request.
Like GrowthBook's Python SDK, characters are hashed as code points.
"""

from __future__ import annotations

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193
BUCKETS = 10_000


def fnv1a32(text: str, state: int = FNV_OFFSET) -> int:
    # For ASCII, code points are the bytes: iterating bytes skips an ord() call per character.
    codes = text.encode() if text.isascii() else map(ord, text)
    for code in codes:
        state = ((state ^ code) * FNV_PRIME) & 0xFFFFFFFF
    return state


def bucket(seed_state: int, key: str) -> int:
    """The user's bucket in 0..9999 for an experiment whose seed hashed to `seed_state`."""
    return fnv1a32(str(fnv1a32(key, seed_state))) % BUCKETS


def gb_hash_v2(seed: str, key: str) -> float:
    """GrowthBook's `gbhash(seed, key, 2)`, for comparison with its SDKs and test cases."""
    return bucket(fnv1a32(seed), key) / BUCKETS
