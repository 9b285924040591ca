"""Outcomes held until their decision is mature (a metric's `maturity` window).

A business outcome can arrive minutes or days after its decision. Counted as it arrives, an
early look sees only the fast outcomes (a treatment that converts sooner looks better, one
that converts later looks worse, before either has its final rate). With `maturity: 1h` on
a metric, an outcome counts only once its decision is an hour old: at any time the samples
are the outcomes of the decisions older than the window, which by then have arrived. An
outcome of a decision already older than the window counts at once; a younger one waits
in the measurement store until its decision comes of age.

The measurement store keeps what is waiting (`hold`), in the state file or in Redis, so a
restart loses none, and moves each into the sums once when it matures (`mature`, each tick of
the statistics worker). Bounded: past MAX_HELD (state/measurements.py) a batch is refused."""

from __future__ import annotations


def mature_at(decided_at: float, maturity: float | None, now: float) -> float | None:
    """When an outcome of a decision made at `decided_at` may count; None: now."""
    if maturity is None or decided_at + maturity <= now:
        return None
    return decided_at + maturity
