"""A stage's size in the unit analysed (users, when the experiment has a sticky key), and
whether the stage can reach it before its max hold at the observed rate. Pure functions.

The sizes of control/rollout/sizing.py are in samples (requests, or posted outcomes), with
the variance inflated by the users' clustering (the design effect). With a fixed population
the same users keep coming back: each new request adds less information than the last, the
design effect grows with the requests per user, and a size in requests recedes without
bound (issue 26, item 8: 214k requests, then 7.94M, every run escalated after max_hold). In
users it does not: the variance of an arm's mean is about sigma_u^2 / users (the delta
method over whole users), so the users needed are

    users needed = users seen * samples needed / samples seen

which tends to a constant (the between-user spread over the squared effect) as the
requests per user grow. Whether the stage finishes is then a question of new users: the
users seen now, plus new users at their recent rate until the stage's max hold. The recent
rate (since half the stage's age) is at least the rate to come when the arrival of new
users slows down (a population saturating), so "cannot finish" is said only when even that
rate is not enough."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ARMS = ("control", "treatment")

# Seconds of arrivals before their recent rate is trusted, and of a stage before it is said
# not to finish: the counts move once per flush of the measurements (a second), and a rate
# or a variance over a few ticks is noise.
MIN_SPAN = 600.0

Units = tuple[float, float]  # (control, treatment): distinct users, plus keyless requests


@dataclass(frozen=True, slots=True)
class Reach:
    """Users per arm: seen, needed, new per second (recently), and by the max hold."""

    have: dict[str, float]
    needed: dict[str, int]
    rate: dict[str, float]
    projected: dict[str, float]
    eta: float | None  # seconds until every arm has its users; None: no arrivals to go by
    finishes: bool  # every arm reaches its users by the max hold at the recent rate
    unit: str = "users"  # "requests" where there is no sticky key: each its own unit

    def as_json(self) -> dict[str, Any]:
        return {
            "have": {arm: round(self.have[arm]) for arm in ARMS},
            "needed": self.needed,
            "new_per_hour": {arm: round(self.rate[arm] * 3600, 1) for arm in ARMS},
            "by_max_hold": {arm: round(self.projected[arm]) for arm in ARMS},
            "cannot_finish": not self.finishes,
        }

    def shortfall(self, max_hold: float) -> str:
        """The numbers of a stage that cannot finish, in words."""
        return "; ".join(
            f"{arm} needs {self.needed[arm]:,} {self.unit}, {self.have[arm]:,.0f} seen, "
            f"about {self.projected[arm]:,.0f} by the max hold ({max_hold / 3600:g} h) "
            f"at {self.rate[arm] * 3600:,.1f} new {self.unit}/h"
            for arm in ARMS
            if self.needed[arm] > self.projected[arm]
        )


def users_needed(
    needs: dict[str, dict[str, int]], have_of: dict[str, dict[str, int]], units: Units
) -> dict[str, int] | None:
    """Users per arm the stage needs: each target metric's samples needed, scaled by the
    users per sample seen so far, the largest over the metrics. None while an arm has no
    sample of a metric (nothing to scale by)."""
    out = {arm: 0 for arm in ARMS}
    for name, need in needs.items():
        for arm, users in zip(ARMS, units, strict=True):
            have = have_of[name][arm]
            if have <= 0:
                return None
            out[arm] = max(out[arm], math.ceil(max(users, 1.0) * need[arm] / have))
    return out


def reach(
    needed: dict[str, int],
    units: Units,
    elapsed: float,
    max_hold: float,
    earlier: tuple[float, Units] | None = None,
) -> Reach:
    """Where the users stand against `needed`, `elapsed` seconds into the stage. `earlier`
    is an earlier reading (its seconds into the stage, its units): new users are counted at
    the rate since then, if that is MIN_SPAN or more; else since the stage began (at least
    the rate to come when arrivals slow down)."""
    have = dict(zip(ARMS, units, strict=True))
    since, before = (0.0, (0.0, 0.0)) if earlier is None else earlier
    if not 0 <= since <= elapsed - MIN_SPAN:
        since, before = 0.0, (0.0, 0.0)
    span = elapsed - since
    rate = {
        arm: max(0.0, (have[arm] - then) / span) if span > 0 else 0.0
        for arm, then in zip(ARMS, before, strict=True)
    }
    left = max(0.0, max_hold - elapsed)
    projected = {arm: have[arm] + rate[arm] * left for arm in ARMS}
    eta: float | None = 0.0
    for arm in ARMS:
        missing = needed[arm] - have[arm]
        if missing <= 0:
            continue
        if rate[arm] <= 0:
            eta = None
            break
        eta = max(eta or 0.0, missing / rate[arm])
    finishes = all(needed[arm] <= projected[arm] for arm in ARMS)
    return Reach(have, needed, rate, projected, eta, finishes)


def stage_reach(
    needs: dict[str, dict[str, int]],
    have_of: dict[str, dict[str, int]],
    units: tuple[tuple[float, float], tuple[float, float]],
    elapsed: float,
    max_hold: float,
    earlier: tuple[float, Units] | None,
    unit: str = "users",
) -> Reach | None:
    """`reach` of the gates' sizes (samples per metric and arm) for the units seen
    ((count, variance) per arm, as the SRM takes them); None while it cannot be scaled."""
    counts = (units[0][0], units[1][0])
    needed = users_needed(needs, have_of, counts)
    if needed is None:
        return None
    return dataclasses.replace(reach(needed, counts, elapsed, max_hold, earlier), unit=unit)
