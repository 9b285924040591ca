"""The statistics process (control/offload.py) as the adversary meets it: a worker that hangs,
that dies between calls, that is stopped in the middle of shutdown, a computation that
fails or answers what pickle refuses. Real processes, forked from the fork server."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from abgate.control import offload
from abgate.control.offload import StatisticsProcess, StatisticsUnavailable


async def test_a_hung_worker_is_killed_at_the_limit_and_the_next_call_gets_a_new_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    statistics = StatisticsProcess()
    try:
        first = await statistics.run(os.getpid)
        os.kill(first, signal.SIGSTOP)  # hung: it takes the call and never answers
        statistics.timeout = 2.0
        with pytest.raises(StatisticsUnavailable, match=r"getpid ran past 2s; its worker was"):
            await statistics.run(os.getpid)
        assert statistics.replaced == 1
        statistics.timeout = offload.COMPUTE_TIMEOUT
        second = await statistics.run(os.getpid)
        assert second not in (first, os.getpid())
    finally:
        await statistics.aclose()
    assert [r.getMessage() for r in caplog.records if r.name == "abgate.stats"] == [
        "statistics: a computation ran past 2s; a new worker is started for the next "
        "computation (each restart is counted in abgate_stats_process_restarts_total)"
    ]
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left stopped
        os.kill(first, 0)


async def test_a_shutdown_ends_a_worker_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(offload, "STOP_TIMEOUT", 0.5)
    statistics = StatisticsProcess()
    pid = await statistics.run(os.getpid)
    os.kill(pid, signal.SIGSTOP)  # it would never read the pipe's end
    await statistics.aclose()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(StatisticsUnavailable, match="shut down"):
        await statistics.run(os.getpid)


async def test_a_computation_s_own_failure_reaches_the_caller_and_the_worker_stays() -> None:
    statistics = StatisticsProcess()
    try:
        pid = await statistics.run(os.getpid)
        with pytest.raises(ValueError, match="invalid literal"):
            await statistics.run(int, "x")
        with pytest.raises(RuntimeError, match="TypeError: cannot pickle"):
            await statistics.run(threading.Lock)  # an answer pickle refuses
        assert await statistics.run(os.getpid) == pid  # the same worker throughout
        assert statistics.replaced == 0
    finally:
        await statistics.aclose()
