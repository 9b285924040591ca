"""Outcomes held until their decision is mature (a metric's `maturity` window), in memory.

A business outcome can arrive minutes or days after its decision. Counted as it arrives, an
early look sees only the fast outcomes (a treatment that converts sooner looks better, one
that converts later looks worse, before either has its final rate). With `maturity: 1h` on
a metric, an outcome counts only once its decision is an hour old: at any time the samples
are the outcomes of the decisions older than the window, which by then have arrived. An
outcome of a decision already older than the window counts at once; a younger one waits
here, and `due` hands it to the measurement store when its decision comes of age.

In memory: a restart drops what is waiting (the history store keeps every outcome with its
decision's time, to be replayed; not done). Bounded: past MAX_HELD a batch is refused."""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from abgate.config.errors import AbgateError
from abgate.state.measurements import MeasureKey, Sums

MAX_HELD = 1_000_000  # outcomes waiting at once (about 150 MB at most)


class MaturingFull(AbgateError):
    """More outcomes waiting than MAX_HELD."""


@dataclass
class Maturing:
    """Outcomes waiting for their decision's maturity, soonest first."""

    limit: int = MAX_HELD
    _heap: list[tuple[float, int, MeasureKey, float]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return len(self._heap)

    def room(self, count: int) -> None:
        """Raises MaturingFull unless `count` more outcomes fit."""
        if len(self._heap) + count > self.limit:
            raise MaturingFull(
                f"{len(self._heap):,} outcomes already wait for their decisions' maturity "
                f"(at most {self.limit:,})"
            )

    def hold(self, key: MeasureKey, value: float, mature_at: float) -> None:
        heapq.heappush(self._heap, (mature_at, next(self._order), key, value))

    @contextlib.contextmanager
    def due(self, now: float) -> Iterator[dict[MeasureKey, Sums]]:
        """The outcomes whose decision is mature by `now`, as one batch: removed when the
        block ends without an error (the store took them), put back otherwise."""
        taken = []
        batch: dict[MeasureKey, Sums] = {}
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            taken.append(entry)
            batch.setdefault(entry[2], Sums()).add(entry[3])
        try:
            yield batch
        except BaseException:
            for entry in taken:
                heapq.heappush(self._heap, entry)
            raise


def mature_at(decided_at: float, maturity: float | None, now: float) -> float | None:
    """When an outcome of a decision made at `decided_at` may count; None: now."""
    if maturity is None or decided_at + maturity <= now:
        return None
    return decided_at + maturity
