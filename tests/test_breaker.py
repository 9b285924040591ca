"""The breaker's state machine, driven with an explicit clock."""

from __future__ import annotations

from dataclasses import replace

from abgate.config.model import BreakerConfig
from abgate.proxy.breaker import Breaker, BreakerState

CONFIG = BreakerConfig(
    window=10.0,
    minimum_calls=10,
    failure_rate=0.5,
    consecutive_failures=5,
    slow_call_duration=1.0,
    slow_call_rate=0.8,
    open_duration=2.0,
    max_open_duration=5.0,
    half_open_calls=3,
    failure_statuses=frozenset({500, 502, 503, 504}),
)


def breaker(**changes: object) -> tuple[Breaker, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    b = Breaker(
        "ml",
        replace(CONFIG, **changes),  # type: ignore[arg-type]
        lambda _b, old, new, _reason: seen.append((old.label, new.label)),
    )
    return b, seen


def test_consecutive_failures_trip() -> None:
    b, seen = breaker()
    for i in range(4):
        assert b.allow(i * 0.01)
        b.record(i * 0.01, failed=True, slow=False)
    assert b.state is BreakerState.CLOSED
    b.record(0.05, failed=True, slow=False)
    assert b.state is BreakerState.OPEN
    assert not b.allow(0.06)
    assert seen == [("closed", "open")]


def test_success_resets_the_run_and_rate_needs_minimum_calls() -> None:
    b, _ = breaker(consecutive_failures=100)
    for i in range(9):  # 9 calls, all failing except every third: below minimum_calls
        b.record(i * 0.1, failed=i % 3 != 0, slow=False)
    assert b.state is BreakerState.CLOSED
    b.record(1.0, failed=True, slow=False)  # 10 calls, 7 failures: 70% >= 50%
    assert b.state is BreakerState.OPEN
    assert "failure rate 7/10" in b.reason


def test_old_failures_leave_the_window() -> None:
    b, _ = breaker(consecutive_failures=100)
    for i in range(6):
        b.record(i * 0.01, failed=True, slow=False)
    for i in range(10):  # eleven seconds later the failures are out of the window
        b.record(11 + i * 0.01, failed=False, slow=False)
    assert b.state is BreakerState.CLOSED


def test_slow_calls_trip() -> None:
    b, _ = breaker()
    for i in range(10):
        b.record(i * 0.01, failed=False, slow=i < 8)
    assert b.state is BreakerState.OPEN
    assert "slow-call rate 8/10" in b.reason


def test_half_open_admits_bounded_trials_then_closes() -> None:
    b, seen = breaker()
    for _i in range(5):
        b.record(0.0, failed=True, slow=False)
    assert not b.allow(1.9)
    assert b.allow(2.0)  # wait over: half-open, first trial
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow(2.0)
    assert b.allow(2.0)
    assert not b.allow(2.0)  # only half_open_calls trials at once
    for _ in range(3):
        b.record(2.1, failed=False, slow=False)
    assert b.state is BreakerState.CLOSED
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_failed_trial_reopens_with_a_longer_wait_capped() -> None:
    b, _ = breaker()
    for _ in range(5):
        b.record(0.0, failed=True, slow=False)
    assert b.open_until == 2.0
    assert b.allow(2.0)
    b.record(2.0, failed=True, slow=False)
    assert b.state is BreakerState.OPEN
    assert b.open_until == 6.0  # 2s doubled
    assert b.allow(6.0)
    b.record(6.0, failed=True, slow=False)
    assert b.open_until == 11.0  # 8s, capped at max_open_duration 5s


def test_forced_states() -> None:
    b, seen = breaker()
    b.force(BreakerState.FORCED_OPEN, 0.0)
    assert not b.allow(100.0)
    b.force(BreakerState.FORCED_CLOSED, 0.0)
    for _ in range(50):
        assert b.allow(1.0)
        b.record(1.0, failed=True, slow=False)
    assert b.state is BreakerState.FORCED_CLOSED  # counts, never trips
    b.force(None, 2.0)
    assert b.state is BreakerState.CLOSED
    assert seen[-1] == ("forced_closed", "closed")


def test_a_breaker_never_asked_recovers_with_time() -> None:
    """A control arm's breaker only observes (its calls have nowhere else to go): after the
    open wait, the outcomes of the calls it sees anyway are its half-open trial."""
    b, seen = breaker()
    for i in range(5):
        b.record(i * 0.01, failed=True, slow=False)
    assert b.state is BreakerState.OPEN
    b.record(1.0, failed=False, slow=False)  # within the wait: counted, still open
    assert b.state is BreakerState.OPEN
    b.record(2.5, failed=False, slow=False)  # after it: the trial starts
    assert b.state is BreakerState.HALF_OPEN
    b.record(2.6, failed=False, slow=False)
    b.record(2.7, failed=False, slow=False)
    assert b.state is BreakerState.CLOSED
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_breaker_never_asked_opens_again_on_a_failed_trial() -> None:
    b, _ = breaker()
    for i in range(5):
        b.record(i * 0.01, failed=True, slow=False)
    b.record(2.5, failed=True, slow=False)  # the first outcome after the wait fails
    assert b.state is BreakerState.OPEN
    assert b.open_until == 2.5 + 4.0  # the wait doubled


def test_a_released_trial_lets_the_next_request_be_the_trial() -> None:
    """A trial that ends without an exchange (a refused body, a client that left) gives its
    place back: half-open never waits for reports that will not come (issue 23 §3)."""
    b, _ = breaker()
    for _ in range(5):
        b.record(0.0, failed=True, slow=False)
    tickets = []
    for _ in range(3):  # half_open_calls trials admitted ...
        assert b.allow(2.0)
        tickets.append(b.generation)
    assert not b.allow(2.0)
    for ticket in tickets:  # ... and each ended before its upstream call
        b.release(ticket)
    for _ in range(3):
        assert b.allow(2.1)
        b.record(2.1, failed=False, slow=False)
    assert b.state is BreakerState.CLOSED
    b.release(tickets[0])  # a ticket of an earlier half-open spell changes nothing now
    assert b.state is BreakerState.CLOSED


def test_recovery_is_bounded_by_the_open_wait_in_force() -> None:
    """However long the upstream was down, once it is back the first request after the
    open wait is a trial, so traffic returns within max_open_duration (plus the trials)."""
    b, _ = breaker()
    now = 0.0
    for _ in range(5):
        b.record(now, failed=True, slow=False)
    for _ in range(10):  # down: every trial fails, the wait doubles up to its cap
        now = b.open_until
        assert b.allow(now)
        b.record(now, failed=True, slow=False)
    back = now + 0.001  # the upstream recovers just after the last failed trial
    assert b.open_until - back <= CONFIG.max_open_duration
    while not b.allow(now):
        now += 0.1
    assert now - back <= CONFIG.max_open_duration + 0.1
    for _ in range(CONFIG.half_open_calls):
        b.record(now, failed=False, slow=False)
    assert b.state is BreakerState.CLOSED
