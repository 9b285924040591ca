"""Flag state: each experiment's treatment percentage, versioned, held in memory.

This is the shared state layer between the data plane and the control plane. The proxy reads
percentages from a `FlagTable` (a dict in memory, never I/O on the request path); writers go
through a `FlagStore`, which applies each new version to the table. The embedded
`MemoryFlagStore` lives in this process; a Redis-backed store (many sidecars, pub/sub) plugs in
behind the same interface and feeds the same table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from config.model import Config

FlagListener = Callable[["Flag"], None]


@dataclass(frozen=True, slots=True)
class Flag:
    name: str
    basis_points: int  # treatment share in 0.01% steps, 0..10000
    version: int  # only grows; an older version never replaces a newer one
    updated_at: float  # unix seconds
    updated_by: str
    reason: str

    @property
    def percentage(self) -> float:
        return self.basis_points / 100

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "percentage": self.percentage,
            "version": self.version,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "reason": self.reason,
        }


class UnknownFlag(KeyError):
    """No experiment of that name."""


class FlagTable:
    """The flags one process routes with. Applying is synchronous and lock-free (one loop)."""

    def __init__(self, flags: Iterable[Flag] = ()) -> None:
        self._flags: dict[str, Flag] = {flag.name: flag for flag in flags}
        self._listeners: list[FlagListener] = []

    @classmethod
    def from_config(cls, config: Config, *, by: str = "config") -> FlagTable:
        now = time.time()
        return cls(
            Flag(name, experiment.percentage_bp, 1, now, by, "initial value from config")
            for name, experiment in config.experiments.items()
        )

    def get(self, name: str) -> Flag:
        try:
            return self._flags[name]
        except KeyError:
            raise UnknownFlag(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._flags

    def all(self) -> list[Flag]:
        return sorted(self._flags.values(), key=lambda flag: flag.name)

    def apply(self, flag: Flag) -> bool:
        """Take `flag` if it is newer than what we hold; tell the listeners. False if stale."""
        current = self._flags.get(flag.name)
        if current is not None and flag.version <= current.version:
            return False
        self._flags[flag.name] = flag
        for listener in tuple(self._listeners):
            listener(flag)
        return True

    def subscribe(self, listener: FlagListener) -> Callable[[], None]:
        """Call `listener` on every applied change; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)


class FlagStore(Protocol):
    """Where flag writes go. Every backend applies what it writes to its `table`."""

    table: FlagTable

    async def set_percentage(self, name: str, basis_points: int, *, by: str,
                             reason: str) -> Flag: ...


class MemoryFlagStore:
    """The embedded default: the table is the store (one process, no Redis)."""

    def __init__(self, table: FlagTable) -> None:
        self.table = table

    async def set_percentage(self, name: str, basis_points: int, *, by: str,
                             reason: str) -> Flag:
        current = self.table.get(name)
        flag = Flag(name, basis_points, current.version + 1, time.time(), by, reason)
        self.table.apply(flag)
        return flag
