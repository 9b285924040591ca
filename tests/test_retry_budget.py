"""The retry budget: fallbacks as a share of requests, each charged beside its request."""

from __future__ import annotations

from abgate.proxy.retry_budget import RetryBudget


def test_at_ratio_one_a_fallback_after_a_long_timeout_is_never_refused() -> None:
    """100 requests over 5 s, the traffic then stops, and each falls back after its 10 s
    read timeout: charged at the time of the fallback, the later ones outran the requests
    left in the sliding window and were refused (the 504s of a hung ML backend)."""
    budget = RetryBudget(ratio=1.0, min_per_second=0.0)
    starts = [1000.0 + i * 0.05 for i in range(100)]
    for started in starts:
        budget.request(started)
    allowed = [budget.try_retry(started + 10.0, started) for started in starts]
    assert all(allowed)
    assert budget.exhausted == 0


def test_a_lower_ratio_still_caps_fallbacks() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0)
    for i in range(100):
        budget.request(2000.0 + i * 0.01)
    allowed = sum(budget.try_retry(2001.5, 2000.0 + i * 0.01) for i in range(100))
    assert allowed == 20
    assert budget.exhausted == 80


def test_the_floor_lets_a_quiet_proxy_fall_back() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.3)  # 3 a 10 s window
    budget.request(3000.0)
    assert [budget.try_retry(3000.5, 3000.0) for _ in range(4)] == [True, True, True, False]
