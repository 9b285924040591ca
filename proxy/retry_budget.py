"""Retry budget: fallback retries may add at most `ratio` of the requests seen in a sliding
window, with a floor so a quiet proxy can still retry.

The default ratio is 1.0, not Envoy's 20%: a fallback is not a retry to the same upstream
but a failover to the control arm, which never takes more than all the traffic (as at 0%),
so it cannot amplify a storm there. Capping it at 20% turned a hung ML backend at 100% into
504s for the requests in flight when it hung (15 of 400 in tests/test_fallback.py's hung
case). Lower it when the control arm cannot absorb the treatment's
share."""

from __future__ import annotations

BUCKETS = 10


class RetryBudget:
    __slots__ = ("_epochs", "_floor", "_ratio", "_requests", "_retries", "_width", "exhausted")

    def __init__(self, ratio: float, min_per_second: float, window: float = 10.0) -> None:
        self._ratio = ratio
        self._floor = min_per_second * window
        self._width = window / BUCKETS
        self._epochs = [-1] * BUCKETS
        self._requests = [0] * BUCKETS
        self._retries = [0] * BUCKETS
        self.exhausted = 0  # retries refused, for the metrics

    def _slot(self, now: float) -> int:
        epoch = int(now / self._width)
        index = epoch % BUCKETS
        if self._epochs[index] != epoch:
            self._epochs[index] = epoch
            self._requests[index] = self._retries[index] = 0
        return index

    def request(self, now: float) -> None:
        self._requests[self._slot(now)] += 1

    def try_retry(self, now: float, started: float) -> bool:
        """Spend one retry if the budget allows it. The retry is charged to the slot of the
        request it retries (`started`), not to `now`: a fallback after a 10 s read timeout
        belongs beside its request (charged at `now`, fallbacks outran the requests left in
        the window once traffic fell), so at ratio 1.0, one fallback per request at most,
        the budget never refuses one."""
        self._slot(now)  # the current slot, fresh
        oldest = int(now / self._width) - BUCKETS
        epoch = int(started / self._width)
        index = epoch % BUCKETS
        # Its request is counted in the window, or (left it) counted here with its retry.
        held = epoch > oldest and self._epochs[index] == epoch
        requests, retries = (0 if held else 1), 0
        for i in range(BUCKETS):
            if self._epochs[i] > oldest:
                requests += self._requests[i]
                retries += self._retries[i]
        if retries >= max(self._floor, self._ratio * requests):
            self.exhausted += 1
            return False
        if held:
            self._retries[index] += 1
        return True
