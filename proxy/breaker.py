"""Per-upstream circuit breaker: closed -> open -> half-open, plus forced states.

Trips on any of: the failure rate over a sliding time window (once it holds a minimum number
of calls), a run of consecutive failures, or the rate of slow calls. Stays open for a wait
that doubles on each trip in a row (capped), then lets a bounded number of trial calls
through (half-open) and closes when they all succeed, or opens again on the first failure.
A control arm's breaker is never asked `allow` (its calls are the fallback of last resort), so
it only observes: it opens on failures like any other, and after the wait the outcomes of the
calls it sees anyway are its trial, so it closes again once the upstream recovers.
States as in resilience4j (CLOSED, OPEN, HALF_OPEN, FORCED_OPEN; FORCED_CLOSED plays its
DISABLED), trip inputs as in Envoy outlier detection (consecutive 5xx) and Traefik (ratios).

Cheap on the request path: `allow` is a comparison or two; `record` of a fast success is a few
integer updates. The window is a ring of buckets, summed only when a failure could trip it.
One loop owns a breaker, so there are no locks.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from abgate.config.model import BreakerConfig

log = logging.getLogger("abgate.breaker")
BUCKETS = 10


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2
    FORCED_OPEN = 3
    FORCED_CLOSED = 4

    @property
    def label(self) -> str:
        return self.name.lower()


Transition = Callable[["Breaker", BreakerState, BreakerState, str], None]


class Breaker:
    __slots__ = (
        "_calls",
        "_consecutive",
        "_epochs",
        "_failures",
        "_generation",
        "_on_transition",
        "_pending",
        "_slow",
        "_trial_admitted",
        "_trial_ok",
        "_trips",
        "_width",
        "config",
        "name",
        "open_until",
        "reason",
        "state",
    )

    def __init__(
        self, name: str, config: BreakerConfig, on_transition: Transition | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.state = BreakerState.CLOSED
        self.reason = ""
        self.open_until = 0.0
        self._on_transition = on_transition
        self._width = config.window / BUCKETS
        self._epochs = [-1] * BUCKETS
        self._calls = [0] * BUCKETS
        self._failures = [0] * BUCKETS
        self._slow = [0] * BUCKETS
        self._consecutive = 0
        self._pending = False  # rates to judge once the window holds minimum_calls
        self._trips = 0  # trips in a row, for the growing wait
        self._trial_admitted = 0
        self._trial_ok = 0
        self._generation = 0  # counts state changes: a ticket is for one half-open spell

    def allow(self, now: float) -> bool:
        """May a call go to this upstream now?"""
        state = self.state
        if state is BreakerState.CLOSED or state is BreakerState.FORCED_CLOSED:
            return True
        if state is BreakerState.FORCED_OPEN:
            return False
        if state is BreakerState.OPEN:
            if now < self.open_until:
                return False
            self._move(BreakerState.HALF_OPEN, "wait over: trying again")
        if self._trial_admitted < self.config.half_open_calls:
            self._trial_admitted += 1
            return True
        return False

    @property
    def generation(self) -> int:
        return self._generation

    def release(self, generation: int) -> None:
        """A half-open trial admitted by `allow` (in the spell `generation`) ended without an
        exchange to judge (the client's body was refused, the client left, abgate's own pool
        was full): its place goes to the next request, so the trial always completes."""
        if (
            generation == self._generation
            and self.state is BreakerState.HALF_OPEN
            and self._trial_admitted > 0
        ):
            self._trial_admitted -= 1

    def record(self, now: float, *, failed: bool, slow: bool) -> None:
        """The outcome of a call: one `allow` let through, or one sent regardless (a control
        arm has nowhere else to go, so it never asks `allow`)."""
        state = self.state
        if state is BreakerState.OPEN and now >= self.open_until:
            # Recovery with time alone: for calls that never ask `allow`, the first outcome
            # after the wait starts the half-open trial, and good answers close the breaker.
            self._move(BreakerState.HALF_OPEN, "wait over: judging calls again")
            state = BreakerState.HALF_OPEN
        if state is BreakerState.HALF_OPEN:
            if failed or slow:
                self._trip(now, "a half-open trial call " + ("failed" if failed else "was slow"))
            else:
                self._trial_ok += 1
                if self._trial_ok >= self.config.half_open_calls:
                    self._trips = 0
                    self._move(BreakerState.CLOSED, "half-open trial calls succeeded")
            return
        epoch = int(now / self._width)
        index = epoch % BUCKETS
        if self._epochs[index] != epoch:
            self._epochs[index] = epoch
            self._calls[index] = self._failures[index] = self._slow[index] = 0
        self._calls[index] += 1
        if not failed:
            self._consecutive = 0
            if not slow:
                if not self._pending:
                    return
                # A failure seen below minimum_calls: judge the rates once there are enough.
            else:
                self._slow[index] += 1
        else:
            self._failures[index] += 1
            self._consecutive += 1
        if state is not BreakerState.CLOSED:
            return  # forced states and OPEN only count
        config = self.config
        if self._consecutive >= config.consecutive_failures:
            self._trip(now, f"{self._consecutive} consecutive failures")
            return
        calls = failures = slow_calls = 0
        oldest = epoch - BUCKETS
        for i in range(BUCKETS):
            if self._epochs[i] > oldest:
                calls += self._calls[i]
                failures += self._failures[i]
                slow_calls += self._slow[i]
        self._pending = calls < config.minimum_calls and (failures > 0 or slow_calls > 0)
        if calls < config.minimum_calls:
            return
        if failures / calls >= config.failure_rate:
            self._trip(now, f"failure rate {failures}/{calls} over {config.window:g}s")
        elif slow_calls / calls >= config.slow_call_rate:
            self._trip(
                now,
                f"slow-call rate {slow_calls}/{calls} over {config.window:g}s "
                f"(slower than {config.slow_call_duration:g}s)",
            )

    def window(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the sliding window, for health reports."""
        oldest = int(now / self._width) - BUCKETS
        calls = failures = 0
        for i in range(BUCKETS):
            if self._epochs[i] > oldest:
                calls += self._calls[i]
                failures += self._failures[i]
        return calls, failures

    def observe(self, now: float, status: int | None, seconds: float) -> bool:
        """One upstream exchange, judged by this breaker's own settings: `status` None when
        no answer came (connect error, timeout, broken answer). True if it failed."""
        config = self.config
        if status is None:
            self.record(now, failed=True, slow=False)
            return True
        failed = status in config.failure_statuses
        self.record(now, failed=failed, slow=seconds >= config.slow_call_duration)
        return failed

    def force(self, state: BreakerState | None, now: float) -> None:
        """FORCED_OPEN or FORCED_CLOSED; None returns to automatic (closed, fresh window)."""
        if state is None:
            self._reset_window()
            self._trips = 0
            self._move(BreakerState.CLOSED, "returned to automatic")
        else:
            self._move(state, "forced through the control API")

    def snapshot(self, now: float) -> dict[str, object]:
        return {
            "upstream": self.name,
            "state": self.state.label,
            "reason": self.reason,
            "open_for_seconds": round(max(0.0, self.open_until - now), 3)
            if self.state is BreakerState.OPEN
            else 0.0,
            "consecutive_failures": self._consecutive,
        }

    def _trip(self, now: float, reason: str) -> None:
        config = self.config
        wait = min(config.open_duration * (2**self._trips), config.max_open_duration)
        self._trips += 1
        self.open_until = now + wait
        self._reset_window()
        self._move(BreakerState.OPEN, f"{reason}; open for {wait:g}s")

    def _reset_window(self) -> None:
        self._epochs = [-1] * BUCKETS
        self._consecutive = 0
        self._pending = False

    def _move(self, state: BreakerState, reason: str) -> None:
        previous, self.state, self.reason = self.state, state, reason
        self._trial_admitted = self._trial_ok = 0
        self._generation += 1
        level = (
            logging.WARNING
            if state in (BreakerState.OPEN, BreakerState.FORCED_OPEN)
            else logging.INFO
        )
        log.log(level, "breaker %s: %s -> %s (%s)", self.name, previous.label, state.label, reason)
        if self._on_transition is not None:
            self._on_transition(self, previous, state, reason)
