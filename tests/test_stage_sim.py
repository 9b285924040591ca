"""Issue 26 item 8: a stage sized in users, and told when it cannot finish (seeded, small)."""

from __future__ import annotations

from abgate.control.rollout.reach import reach, users_needed
from benchmarks.stage_sim import fixed_population


def test_a_fixed_population_cannot_finish_and_says_so_with_numbers() -> None:
    # 20,000 users at 36,000 requests an hour: the size in samples keeps growing with the
    # requests per user (the ETA in requests receded from 10 h to 225 h in the
    # benchmark); the gate now says within hours that the users needed are out of reach.
    looks = fixed_population(users=20_000, per_tick=6_000, hours=3, seed=11)
    last = looks[-1]
    assert last.decision.kind == "cannot_finish"
    assert last.decision.verdict == "hold"
    assert last.decision.eta_seconds is None
    assert last.decision.reason.startswith("cannot finish at the observed rate: ")
    assert " needs " in last.decision.reason
    assert "new users/h" in last.decision.reason
    assert last.hours <= 3  # within hours of min_duration, not after max_hold (48 h)
    users = last.users
    assert users is not None
    assert users["cannot_finish"] is True


def test_the_size_in_users_settles_while_the_size_in_samples_recedes() -> None:
    looks = fixed_population(users=20_000, per_tick=6_000, hours=8, seed=12, stop_early=False)
    early, late = looks[11], looks[-1]  # 2 h and 8 h
    assert late.samples_needed > 1.5 * early.samples_needed
    assert early.users is not None
    assert late.users is not None
    needed_early = early.users["needed"]["treatment"]  # type: ignore[index]
    needed_late = late.users["needed"]["treatment"]  # type: ignore[index]
    assert 0.8 < needed_late / needed_early < 1.25


def test_a_large_population_is_never_told_it_cannot_finish() -> None:
    looks = fixed_population(users=2_000_000, per_tick=6_000, hours=2, seed=13)
    assert all(look.decision.kind != "cannot_finish" for look in looks)
    eta = looks[-1].decision.eta_seconds
    assert eta is not None
    assert eta < 48 * 3600


def test_users_needed_scale_the_samples_needed_by_users_per_sample() -> None:
    needs = {"m": {"control": 1000, "treatment": 100}, "n": {"control": 10, "treatment": 10}}
    have = {"m": {"control": 500, "treatment": 50}, "n": {"control": 5, "treatment": 5}}
    assert users_needed(needs, have, (100.0, 10.0)) == {"control": 200, "treatment": 20}
    assert users_needed(needs, {**have, "n": {"control": 0, "treatment": 5}}, (1.0, 1.0)) is None


def test_reach_projects_new_users_at_their_recent_rate() -> None:
    needed = {"control": 1_000, "treatment": 100}
    # 500 then 600 control users at 1 h then 2 h: 100 new an hour, 10 hours to go.
    found = reach(needed, (600.0, 60.0), 7200.0, 12 * 3600.0, (3600.0, (500.0, 50.0)))
    assert found.rate["control"] * 3600 == 100.0
    assert found.projected["control"] == 1_600.0
    assert found.finishes
    assert found.eta == 4 * 3600.0
    # Saturated: no new users since the earlier reading.
    stuck = reach(needed, (600.0, 60.0), 7200.0, 12 * 3600.0, (3600.0, (600.0, 60.0)))
    assert not stuck.finishes
    assert stuck.eta is None
    # A reading a few ticks old is no rate (the counts move once per flush): since the start.
    flat = reach(needed, (600.0, 60.0), 700.0, 12 * 3600.0, (650.0, (600.0, 60.0)))
    assert flat.finishes
    assert flat.rate["control"] == 600.0 / 700.0
    assert "control needs 1,000 users, 600 seen, about 600 by the max hold (12 h)" in (
        stuck.shortfall(12 * 3600.0)
    )


def test_the_controller_keeps_a_reading_from_half_the_stage_age() -> None:
    from abgate.control.rollout.evaluation import Seen

    seen = Seen()
    found = [seen.earlier(7, float(t), (float(t), 0.0)) for t in range(1, 201)]
    assert found[0] is None  # nothing earlier yet
    since, units = found[-1] or (0.0, (0.0, 0.0))
    assert 100 <= since < 200
    assert units[0] == since
    assert len(seen.readings) <= 65
    # A new stage (a new phase, or the clock of a stage restarted) starts afresh.
    assert seen.earlier(8, 50.0, (1.0, 1.0)) is None


def test_a_stage_that_cannot_finish_is_escalated_at_once() -> None:
    from abgate.control.rollout.moves import held_state

    assert held_state("running", "cannot_finish", overdue=False) == "escalated"
    assert held_state("running", "insufficient", overdue=False) == "running"
    assert held_state("running", "insufficient", overdue=True) == "escalated"
    assert held_state("running", "bake", overdue=True) == "running"
    assert held_state("awaiting_approval", "cannot_finish", overdue=True) == "awaiting_approval"


def test_without_a_sticky_key_the_units_are_called_requests() -> None:
    from abgate.control.rollout.reach import stage_reach

    needs = {"m": {"control": 1000, "treatment": 100}}
    have = {"m": {"control": 100, "treatment": 10}}
    units = ((100.0, 0.0), (10.0, 0.0))
    found = stage_reach(needs, have, units, 3600.0, 7200.0, None, "requests")
    assert found is not None
    assert found.needed == {"control": 1000, "treatment": 100}
    assert "control needs 1,000 requests, 100 seen" in found.shortfall(7200.0)
    assert "new requests/h" in found.shortfall(7200.0)
