"""The outcome sink that feeds the history store: one tuple appended per experiment request
(sampled), nothing else on the request path; the writer's task does the rest."""

from __future__ import annotations

import random
import time
from typing import Protocol

from abgate.proxy.hashing import NO_BUCKET
from abgate.proxy.outcome import Outcome


class DecisionBuffer(Protocol):
    def add_decision(
        self,
        row: tuple[
            float, str, str, int, str, int | None, str, int, float | None, str | None, str | None
        ],
    ) -> None: ...


class HistorySink:
    __slots__ = ("_buffer", "_random", "_sample")

    def __init__(
        self, buffer: DecisionBuffer, sample: float = 1.0, rng: random.Random | None = None
    ) -> None:
        self._buffer = buffer
        self._sample = sample
        self._random = (rng or random.Random()).random

    def __call__(self, outcome: Outcome) -> None:
        assigned = outcome.assigned
        if not assigned.experiment:
            return  # routes without an experiment: not a decision
        if self._sample < 1.0 and self._random() >= self._sample:
            return
        bucket = outcome.bucket
        self._buffer.add_decision(
            (
                time.time(),
                outcome.request_id,
                assigned.experiment,
                outcome.phase,
                assigned.arm,
                None if bucket == NO_BUCKET else bucket,
                outcome.served.pool.name,
                outcome.status,
                outcome.seconds,
                outcome.error or None,
                outcome.fallback or None,
            )
        )
