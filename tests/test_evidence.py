"""Which phases the comparison of record reads, and the power it reports (pure functions)."""

from __future__ import annotations

import pytest
from scipy import stats

from abgate.control.evidence import design_power, phases_used
from abgate.control.stats.clusters import ClusteredSums
from abgate.state.measurements import Phase
from benchmarks.rollout_sim import experiment

EXP = experiment()
BOTH = ClusteredSums.of([(True, 10, 1.0, 1.0)] * 30)


def arms(*phases: int) -> dict[tuple[int, str, str], ClusteredSums]:
    return {(p, arm, "error"): BOTH for p in phases for arm in ("a", "b")}


PHASES = [
    Phase(1, 0, 10.0),  # before the rollout: shadow at 0%
    Phase(2, 500, 20.0),  # 5%, the rollout's first stage
    Phase(3, 2500, 30.0),
    Phase(4, 10_000, 40.0),  # 100%: no control arm
    Phase(5, 5000, 60.0),  # a load test at 50% after the rollout ended at 50.0
    Phase(6, 10_000, 70.0),
]


def ids(used: list[Phase]) -> list[int]:
    return [p.id for p in used]


def test_the_current_phase_while_it_has_both_arms() -> None:
    basis, used = phases_used(EXP, PHASES[:3], arms(1, 2, 3), since=15.0, current=3)
    assert (basis, ids(used)) == ("current phase", [3])


def test_after_the_rollout_its_stages_with_a_control_arm() -> None:
    basis, used = phases_used(EXP, PHASES, arms(2, 3, 5), since=15.0, until=50.0, current=6)
    assert (basis, ids(used)) == ("earlier phases with both arms", [2, 3])


def test_a_phase_at_100_percent_is_never_a_comparison() -> None:
    """Requests in flight when the share went to 100% count there under the control arm."""
    basis, used = phases_used(EXP, PHASES[:4], arms(2, 3, 4), since=15.0, current=4)
    assert (basis, ids(used)) == ("earlier phases with both arms", [2, 3])


def test_a_phase_not_yet_measured_is_current_all_the_same() -> None:
    """The flag moved to phase 6 but no request was measured in it: phase 5 (a load test,
    both arms) is not the current phase."""
    basis, used = phases_used(EXP, PHASES[:5], arms(2, 3, 5), since=15.0, until=50.0, current=6)
    assert (basis, ids(used)) == ("earlier phases with both arms", [2, 3])


def test_the_phase_current_at_the_start_counts() -> None:
    """A rollout started when the flag was already at its first stage writes no phase."""
    _, used = phases_used(EXP, PHASES[:4], arms(2, 3), since=25.0, current=4)
    assert ids(used) == [2, 3]
    assert phases_used(EXP, [], {}, current=1) == ("no measurements yet", [])


@pytest.mark.parametrize(("effect", "se"), [(0.1, 0.0357), (0.02, 0.01), (0.3, 0.05)])
def test_design_power_is_the_two_sided_z_power(effect: float, se: float) -> None:
    z = stats.norm.ppf(0.975)
    expected = stats.norm.cdf(effect / se - z) + stats.norm.cdf(-effect / se - z)
    assert design_power(effect, se, 0.05) == pytest.approx(expected, rel=1e-9)
    assert design_power(0.1, 0.0357, 0.05) == pytest.approx(0.8, abs=0.01)  # 2.8 se


def test_too_few_users_in_both_arms_is_said_as_such() -> None:
    """A metric in both arms from too few users is not "in no phase in both arms": the
    reason names what is missing (trial)."""
    from abgate.control.evidence import compare

    error = EXP.metric("error")
    assert error is not None
    few = ClusteredSums.of([(True, 10, 1.0, 1.0)] * 7)
    result = compare(EXP, error, PHASES[1:2], {(2, arm, "error"): few for arm in ("a", "b")})
    assert result.status == (
        "not enough data: error is in both arms, from too few users to compare: each arm "
        "needs 20 (the fullest phase has 7 and 7)"
    )
    alone = compare(EXP, error, PHASES[1:2], {(2, "a", "error"): BOTH})
    assert alone.status == "not enough data: no phase has error in both arms"
