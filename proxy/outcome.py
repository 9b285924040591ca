"""One record per proxied request, handed to the sinks wired at start-up.

As Envoy ends every request with one `log(context, stream_info)` call to its access loggers,
the handler ends every request by building one `Outcome` and calling each sink with it. A
new consumer of per-request facts (the history store, an access log) is a sink added in the
wiring (`DataPlane`), never an edit of the handler.

Sinks run on the request path: in memory only, no I/O, no await, nothing that can raise on
good input. What must reach a store is buffered and flushed by a task the sink's owner runs.

The breaker is not a sink: it judges upstream *exchanges* (a treatment try that a fallback
then answered is one of them), and is told at each exchange through `Breaker.observe`. The
Prometheus counters are one (`ProxyMetrics.__call__`): responses per arm, fallbacks, upstream
errors, abgate's own answers and its overhead are all read from the record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from abgate.proxy.hashing import BUCKET_MASK, NO_BUCKET

if TYPE_CHECKING:
    from abgate.proxy.destination import Destination


class Outcome(NamedTuple):
    """What happened to one request. A NamedTuple: immutable and the cheapest record Python
    builds (no per-field `object.__setattr__` as in a frozen dataclass)."""

    request_id: str
    assigned: Destination  # the arm the split chose (kept on a fallback: intention to treat)
    served: Destination  # who answered: the assigned arm, or the control arm on a fallback
    phase: int  # the experiment's phase when its arm was chosen; -1 without one
    draw: int  # the split's draw: bucket, and user hash if keyed (proxy/hashing.py); or NO_BUCKET
    status: int  # what the client got (502 for a body that broke off, 499: the client left)
    seconds: float | None  # upstream time the user waited (first try to answer); None: none
    error: str  # the upstream error kind ("connect", "timeout", ...), "" when none
    fallback: str  # why the control arm answered instead, "" when it did not
    metrics: tuple[tuple[str, float], ...]  # extra metric values read from the answer
    local: str = ""  # why abgate answered itself (a reason label), "" when an upstream did
    tried: tuple[int, float] | None = None  # the treatment try a fallback replaced: status, s
    overhead: float | None = None  # seconds abgate added to an upstream's answer

    @property
    def experiment(self) -> str:
        return self.assigned.experiment

    @property
    def arm(self) -> str:
        return self.assigned.arm

    @property
    def upstream(self) -> str:
        return self.served.pool.name

    @property
    def bucket(self) -> int:
        """The sticky bucket (0..9999) the split used, NO_BUCKET when it used none."""
        return self.draw & BUCKET_MASK if self.draw >= 0 else NO_BUCKET


OutcomeSink = Callable[[Outcome], None]


def arm_statistics(outcome: Outcome) -> None:
    """The sink behind `abgate_requests`, the latency histogram and the arm statistics: each
    request counted once, in the arm it was assigned, with what its user got, in the cluster
    of its user."""
    assigned = outcome.assigned
    if not outcome.fallback:  # a fallback: abgate_fallbacks_total, its try by ProxyMetrics
        assigned.stats.count(outcome.status, outcome.seconds)
    recorder = assigned.stats.recorder
    if recorder is not None:
        recorder.record(outcome.status, outcome.seconds, outcome.draw, outcome.phase)
        for name, value in outcome.metrics:
            recorder.add(name, value)
