"""Sticky assignment of a request to an experiment's control or treatment arm.

The percentage lives in `threshold` (basis points) and is pushed in by the flag table when it
changes; assigning reads one attribute and hashes the key. Raising the threshold only ever moves
users from control to treatment, because a user's bucket never changes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from abgate.config.model import ExperimentConfig, StickySource
from abgate.proxy.hashing import BUCKET_MASK, BUCKETS, NO_BUCKET, fnv1a32, user_draw


class StickyFields(Protocol):
    """What a split reads of a request (proxy/request.py's ClientRequest): the places a
    sticky key can come from."""

    @property
    def remote(self) -> str | None: ...

    def header_text(self, lower_name: bytes) -> str | None: ...

    def cookie(self, name: str) -> str | None: ...

    def query(self, name: str) -> str | None: ...


KeyReader = Callable[[StickyFields], str | None]


def _key_reader(source: StickySource) -> KeyReader:
    name = source.name
    if source.kind == "header":
        lower = name.lower().encode("latin-1")
        return lambda request: request.header_text(lower) or None
    if source.kind == "cookie":
        return lambda request: request.cookie(name) or None
    if source.kind == "query":
        return lambda request: request.query(name) or None
    return lambda request: request.remote or None


class Splitter:
    """Decides, per request, whether an experiment's treatment arm serves it."""

    __slots__ = ("_fallback", "_random", "_readers", "_seed_state", "name", "threshold")

    def __init__(self, config: ExperimentConfig, threshold: int, rng: random.Random) -> None:
        self.name = config.name
        self.threshold = threshold
        self._seed_state = fnv1a32(config.seed)
        self._readers = tuple(_key_reader(source) for source in config.sticky)
        self._random = rng
        self._fallback = config.when_missing

    def sticky_key(self, request: StickyFields) -> str | None:
        for read in self._readers:
            key = read(request)
            if key is not None:
                return key
        return None

    def assign(self, request: StickyFields) -> int:
        """The request's draw: its user's bucket, flag and hash (proxy/hashing.py
        `user_draw`), a bare bucket 0..BUCKETS-1 drawn at random for a keyless request under
        `when_missing: random`, or NO_BUCKET when the split needs none; `treats` says which
        arm it falls in. Returned so the outcome record can keep it (never the raw key)."""
        threshold = self.threshold
        if threshold <= 0 or threshold >= BUCKETS:
            return NO_BUCKET
        key = self.sticky_key(request)
        if key is None:
            if self._fallback == "random":
                return int(self._random.random() * BUCKETS)
            if self._fallback == "control":
                return NO_BUCKET
            key = request.remote
            if key is None:
                return NO_BUCKET
        return user_draw(self._seed_state, key)

    def treats(self, draw: int) -> bool:
        """Whether a draw from `assign` falls in the treatment arm (NO_BUCKET's bits are all
        set: its bucket part, 16383, is beyond any threshold below 100%)."""
        threshold = self.threshold
        if threshold >= BUCKETS:
            return True
        return draw & BUCKET_MASK < threshold

    def is_treatment(self, request: StickyFields) -> bool:
        return self.treats(self.assign(request))
