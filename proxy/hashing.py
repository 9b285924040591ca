"""GrowthBook-compatible sticky bucketing (hash version 2). Pure functions, no I/O.

    n = fnv1a32(str(fnv1a32(seed + key))) % 10000 / 10000      (growthbook core.py::gbhash)

A request goes to treatment iff n < percentage / 100, i.e. iff the integer bucket
`fnv1a32(...) % 10000` is below the percentage in basis points. FNV-1a is a streaming hash, so
the state after the seed is computed once per experiment and only the key is hashed per request.
The split only needs the bucket; the statistics also need to know the user (to take users as
the unit), never the raw key: `user_draw` packs the bucket, a KEYED flag and a 32-bit user
hash (fmix32 of the inner FNV hash, mixed because FNV's bits are uneven for keys like
`user-1`, `user-2`, ...) into one int, so the request path carries one value and allocates
nothing more.

Characters are hashed as UTF-16 code units, as GrowthBook's JavaScript SDK (`charCodeAt`) and
its Python SDK do: a character beyond U+FFFF (an emoji) counts as its two surrogates.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193
BUCKETS = 10_000


def fnv1a32(text: str, state: int = FNV_OFFSET) -> int:
    # For ASCII, the code units are the bytes: iterating bytes skips a call per character.
    if text.isascii():
        codes: Iterable[int] = text.encode()
    else:
        data = text.encode("utf-16-le", "surrogatepass")
        codes = memoryview(data).cast("H")  # native order: little-endian on what we run on
        if sys.byteorder != "little":
            codes = [data[i] | data[i + 1] << 8 for i in range(0, len(data), 2)]
    for code in codes:
        state = ((state ^ code) * FNV_PRIME) & 0xFFFFFFFF
    return state


BUCKET_MASK = 0x3FFF  # the draw's low 14 bits: the bucket (< 10,000 < 2**14)
NO_BUCKET = -1  # the split needed no hash (0% or 100%, or no key and `when_missing: control`)
KEYED = 1 << 14  # set when the draw came from a user's key (not a random draw)
USER_SHIFT = 15  # the user hash sits above the flag


def fmix32(h: int) -> int:
    """MurmurHash3's finaliser: every output bit depends on every input bit."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def user_draw(seed_state: int, key: str) -> int:
    """The user's bucket, the KEYED flag and the user's 32-bit hash, in one int."""
    inner = fnv1a32(key, seed_state)
    return fmix32(inner) << USER_SHIFT | KEYED | fnv1a32(str(inner)) % BUCKETS


def user_hash(seed_state: int, key: str) -> int:
    """The 32-bit user hash `user_draw` carries, alone (for outcomes that name their user)."""
    return fmix32(fnv1a32(key, seed_state))


def user_of(draw: int) -> int | None:
    """The 32-bit user hash of a draw, None when no user was behind it."""
    return draw >> USER_SHIFT if draw > 0 and draw & KEYED else None


def bucket(seed_state: int, key: str) -> int:
    """The user's bucket in 0..9999 for an experiment whose seed hashed to `seed_state`."""
    return fnv1a32(str(fnv1a32(key, seed_state))) % BUCKETS


def gb_hash_v2(seed: str, key: str) -> float:
    """GrowthBook's `gbhash(seed, key, 2)`, for comparison with its SDKs and test cases."""
    return bucket(fnv1a32(seed), key) / BUCKETS
