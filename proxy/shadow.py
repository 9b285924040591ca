"""Shadow mode: copies of control-served requests go to the treatment upstream in the
background, and the two answers are compared.

The client's response never waits on the copy: it is sent after the control answer is in
hand, from a task this object owns (closed with the data plane). At most `max_in_flight`
copies run at once; beyond that, or while the treatment's breaker is open, copies are dropped
and counted. Once the breaker's wait is over, a copy may be its half-open trial: a treatment
that takes no live share (shadow at 0%) is thus seen to recover. Each pair is compared on
status, on the configured JSON fields (`$.decision`), and on latency.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any

import orjson
from prometheus_client.core import Metric

from abgate.config import metrics_catalogue
from abgate.config.metrics_catalogue import LATENCY_BUCKETS
from abgate.config.model import ShadowConfig
from abgate.proxy.breaker import Breaker, BreakerState
from abgate.proxy.errors import UpstreamError
from abgate.proxy.headers import RequestHead
from abgate.proxy.jsonpath import MISSING, extract
from abgate.proxy.pool import UpstreamPool
from abgate.state.histogram import Histogram

log = logging.getLogger("abgate.shadow")
MAX_SHADOW_BODY = 1024 * 1024
SAMPLES = 5


class Shadow:
    def __init__(self, experiment: str, config: ShadowConfig, rng: random.Random) -> None:
        self.experiment = experiment
        self.config = config
        self._rng = rng
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.total = self.agreements = self.disagreements = self.errors = 0
        self.dropped: dict[str, int] = {"max_in_flight": 0, "breaker_open": 0}
        self.latency = {
            "control": Histogram(LATENCY_BUCKETS),
            "treatment": Histogram(LATENCY_BUCKETS),
        }
        self.samples: deque[dict[str, Any]] = deque(maxlen=SAMPLES)

    def sampled(self) -> bool:
        return self._rng.random() * 10_000 < self.config.percentage_bp

    def mirror(
        self,
        pool: UpstreamPool,
        breaker: Breaker,
        head: Callable[[], RequestHead],
        body: bytes | None,
        control_status: int,
        control_body: bytes,
        control_seconds: float,
    ) -> None:
        """Start a copy unless the limits say drop it. Returns at once."""
        if self._closed:
            return
        if len(self._tasks) >= self.config.max_in_flight:
            self.dropped["max_in_flight"] += 1
            return
        # The breaker is asked as for a live call: while it is open nothing goes, and once its
        # wait is over a copy may be the half-open trial, so that a treatment with no live
        # share (shadow only, 0%) is seen to recover; that copy's outcome settles the trial.
        if not breaker.allow(perf_counter()):
            self.dropped["breaker_open"] += 1
            return
        trial = breaker.generation if breaker.state is BreakerState.HALF_OPEN else None
        task = asyncio.create_task(
            self._compare(
                pool, head, body, control_status, control_body, control_seconds, breaker, trial
            ),
            name=f"abgate-shadow-{self.experiment}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(
        self,
        pool: UpstreamPool,
        head: Callable[[], RequestHead],
        body: bytes | None,
        control_status: int,
        control_body: bytes,
        control_seconds: float,
        breaker: Breaker,
        trial: int | None,
    ) -> None:
        """`trial`: the half-open spell this copy is a trial call of (None: not one)."""
        started = perf_counter()
        try:
            response = await pool.request(head().data, body)
            chunks, size = [], 0
            while chunk := await response.read():
                size += len(chunk)
                if size > MAX_SHADOW_BODY:
                    response.abandon()
                    raise UpstreamError(pool.name, "shadow answer over 1 MiB")
                chunks.append(chunk)
        except UpstreamError as exc:
            self.total += 1
            self.errors += 1
            log.debug("shadow copy to %s failed: %s", pool.name, exc.detail)
            if trial is not None and breaker.generation == trial:
                breaker.observe(perf_counter(), None, perf_counter() - started)
            return
        except BaseException:  # cancelled at shutdown: the trial's place goes back
            if trial is not None:
                breaker.release(trial)
            raise
        seconds = perf_counter() - started
        if trial is not None and breaker.generation == trial:
            breaker.observe(perf_counter(), response.status, seconds)
        self.total += 1
        self.latency["control"].observe(control_seconds)
        self.latency["treatment"].observe(seconds)
        differences = self._differences(
            control_status, control_body, response.status, b"".join(chunks)
        )
        if not differences:
            self.agreements += 1
            return
        self.disagreements += 1
        self.samples.append(
            {
                "differences": differences,
                "latency_ms": {
                    "control": round(control_seconds * 1000, 3),
                    "treatment": round(seconds * 1000, 3),
                },
            }
        )

    def _differences(
        self, control_status: int, control_body: bytes, status: int, body: bytes
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if control_status != status:
            out["status"] = {"control": control_status, "treatment": status}
        if not self.config.compare:
            return out
        try:
            control_doc: Any = orjson.loads(control_body)
            treatment_doc: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            out["body"] = "not JSON"
            return out
        for text, path in self.config.compare:
            left, right = extract(control_doc, path), extract(treatment_doc, path)
            if left != right:
                out[text] = {
                    "control": None if left is MISSING else left,
                    "treatment": None if right is MISSING else right,
                }
        return out

    def stats(self) -> dict[str, Any]:
        compared = self.agreements + self.disagreements
        return {
            "experiment": self.experiment,
            "total_decisions": self.total,
            "agreements": self.agreements,
            "disagreements": self.disagreements,
            "agreement_rate": self.agreements / compared if compared else None,
            "errors": self.errors,
            "dropped": dict(self.dropped),
            "in_flight": len(self._tasks),
            "latency_mean_ms": {
                side: round(h.sum / n * 1000, 3) if (n := sum(h.counts)) else None
                for side, h in self.latency.items()
            },
            "recent_disagreements": list(self.samples),
        }

    def collect(self) -> Iterator[Metric]:
        results = metrics_catalogue.SHADOW_COMPARISONS.new()
        for result, count in (
            ("agree", self.agreements),
            ("disagree", self.disagreements),
            ("error", self.errors),
        ):
            results.add_metric([self.experiment, result], count)
        yield results
        dropped = metrics_catalogue.SHADOW_DROPPED.new()
        for reason, count in self.dropped.items():
            dropped.add_metric([self.experiment, reason], count)
        yield dropped
        latency = metrics_catalogue.SHADOW_LATENCY.new()
        for side, histogram in self.latency.items():
            latency.add_metric([self.experiment, side], histogram.cumulative(), histogram.sum)
        yield latency

    async def aclose(self) -> None:
        """Stop taking copies and wait for (then cancel) those in flight."""
        self._closed = True
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
