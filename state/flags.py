"""Flag state: each experiment's treatment percentage, versioned, held in memory.

This is the shared state layer between the data plane and the control plane. The proxy reads
percentages from a `FlagTable` (a dict in memory, never I/O on the request path); writers go
through a `FlagStore`, which applies each new version to the table. The embedded
`MemoryFlagStore` lives in this process; a Redis-backed store (many sidecars, pub/sub) plugs in
behind the same interface and feeds the same table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from abgate.config.errors import AbgateError
from abgate.config.model import Config
from abgate.state.errors import StoreUnavailable

if TYPE_CHECKING:
    from abgate.state.state_file import StateFile

log = logging.getLogger("abgate.flags")
FlagListener = Callable[["Flag"], None]


@dataclass(frozen=True, slots=True)
class Flag:
    name: str
    basis_points: int  # treatment share in 0.01% steps, 0..10000
    version: int  # only grows; an older version never replaces a newer one
    updated_at: float  # unix seconds
    updated_by: str
    reason: str
    # The version that set this percentage: measurements are compared within a phase, and a
    # write that leaves the percentage as it was (25 -> 25) does not start a new one.
    phase: int = 0  # 0: this version itself

    def __post_init__(self) -> None:
        if self.phase == 0:
            object.__setattr__(self, "phase", self.version)

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
            "phase": self.phase,
        }


def flag_from_json(data: dict[str, Any]) -> Flag:
    """A flag as the state file, Redis and the live-state channel carry it."""
    return Flag(
        name=str(data["name"]),
        basis_points=int(data["basis_points"]),
        version=int(data["version"]),
        updated_at=float(data["updated_at"]),
        updated_by=str(data["updated_by"]),
        reason=str(data["reason"]),
        phase=int(data.get("phase") or 0),
    )


def flag_to_json(flag: Flag) -> dict[str, Any]:
    return {
        "name": flag.name,
        "basis_points": flag.basis_points,
        "version": flag.version,
        "updated_at": flag.updated_at,
        "updated_by": flag.updated_by,
        "reason": flag.reason,
        "phase": flag.phase,
    }


def load_flags(file: StateFile) -> tuple[list[Flag], dict[str, list[dict[str, Any]]]]:
    """Flags and history from the state file; nothing if it does not exist. A corrupt or
    unreadable file is logged and ignored (the config defaults apply), never fatal."""
    data = file.read()
    try:
        flags = [flag_from_json(item) for item in data.get("flags", [])]
        history = {str(k): list(v) for k, v in data.get("history", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.error("ignoring unreadable flag state in %s: %s", file.path, exc)
        return [], {}
    return flags, history


def save_flags(
    file: StateFile, flags: list[Flag], history: dict[str, list[dict[str, Any]]]
) -> None:
    """The flag section; raises OSError when the file cannot be written."""
    file.save_section(flags=[flag_to_json(flag) for flag in flags], history=history)


def save_flags_copy(
    file: StateFile, flags: list[Flag], history: dict[str, list[dict[str, Any]]] | None = None
) -> None:
    """A copy of flags that live in Redis: a failed write is logged once, never raised."""
    file.save_copy(
        "flag snapshot", flags=[flag_to_json(flag) for flag in flags], history=history or {}
    )


class UnknownFlag(KeyError, AbgateError):
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

    def ensure(self, name: str, basis_points: int, *, by: str = "config") -> None:
        """Add a flag for an experiment that appeared (config reload); keep an existing one."""
        if name not in self._flags:
            self.apply(Flag(name, basis_points, 1, time.time(), by, "initial value from config"))

    def versions(self) -> dict[str, int]:
        return {name: flag.version for name, flag in self._flags.items()}

    def subscribe(self, listener: FlagListener) -> Callable[[], None]:
        """Call `listener` on every applied change; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)


@dataclass(frozen=True, slots=True)
class Instance:
    """One proxy process as the control plane sees it."""

    id: str
    address: str
    pid: int
    started_at: float
    heartbeat_at: float
    applied: dict[str, int]  # flag name -> version this instance routes with
    breakers: dict[str, str] = field(default_factory=dict)  # upstream -> breaker state

    def converged(self, flags: Iterable[Flag]) -> bool:
        return all(self.applied.get(flag.name, 0) >= flag.version for flag in flags)

    def as_json(self, flags: list[Flag]) -> dict[str, object]:
        return {
            "id": self.id,
            "address": self.address,
            "pid": self.pid,
            "started_at": self.started_at,
            "heartbeat_at": self.heartbeat_at,
            "applied": self.applied,
            "converged": self.converged(flags),
            "breakers": self.breakers,
        }


class VersionConflict(AbgateError):
    """A compare-and-set write found another version than it expected; nothing was written.
    `current` is the flag as it stands (someone else changed it meanwhile)."""

    def __init__(self, current: Flag, expected: int) -> None:
        super().__init__(f"{current.name} is at version {current.version}, not {expected}")
        self.current = current
        self.expected = expected


class FlagStore(Protocol):
    """Where flag writes go. Every backend applies what it writes to its `table`."""

    table: FlagTable

    async def set_percentages(
        self,
        changes: Mapping[str, int],
        *,
        by: str,
        reason: str,
        expected: Mapping[str, int] | None = None,
    ) -> list[Flag]:
        """Set several flags in one atomic step (all or none); each gets a new version.
        `expected` (flag -> version) makes it a compare-and-set: if any named flag is at
        another version, nothing is written and VersionConflict names it."""
        ...

    async def history(self, name: str, limit: int) -> list[dict[str, object]]:
        """The newest `limit` changes of a flag, newest first."""
        ...

    async def instances(self) -> list[Instance]:
        """The live proxy instances and the flag versions each has applied."""
        ...


HISTORY_LIMIT = 1000  # per flag, in the memory backend's file


def _next(current: Flag, basis_points: int, now: float, by: str, reason: str) -> Flag:
    """The flag a write makes of `current`: a new version, a new phase only if the
    percentage changes."""
    version = current.version + 1
    phase = current.phase if basis_points == current.basis_points else version
    return Flag(current.name, basis_points, version, now, by, reason, phase)


class MemoryFlagStore:
    """The embedded default: the table is the store, persisted to a local file. `abgate run`
    serves it to its data plane over the live-state channel (state/live_server.py), which
    also knows the instances."""

    def __init__(self, table: FlagTable, state_file: StateFile | None = None) -> None:
        self.table = table
        self._file = state_file
        self._history: dict[str, list[dict[str, object]]] = {}

    def restore(self) -> int:
        """Take newer flags from the state file (if any) into the table; returns how many."""
        if self._file is None:
            return 0
        flags, history = load_flags(self._file)
        self._history = {name: list(entries) for name, entries in history.items()}
        return sum(self.table.apply(flag) for flag in flags if flag.name in self.table)

    async def set_percentages(
        self,
        changes: Mapping[str, int],
        *,
        by: str,
        reason: str,
        expected: Mapping[str, int] | None = None,
    ) -> list[Flag]:
        """Persisted first, then applied: a write the file refuses changes nothing."""
        for name, version in (expected or {}).items():
            current = self.table.get(name)
            if current.version != version:
                raise VersionConflict(current, version)
        now = time.time()
        flags = [
            _next(self.table.get(name), basis_points, now, by, reason)
            for name, basis_points in changes.items()
        ]
        history = dict(self._history)
        for flag in flags:
            history[flag.name] = [*history.get(flag.name, []), flag.as_json()][-HISTORY_LIMIT:]
        if self._file is not None:
            state = {flag.name: flag for flag in self.table.all()} | {f.name: f for f in flags}
            try:
                save_flags(self._file, sorted(state.values(), key=lambda f: f.name), history)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot write the state file {self._file.path}: {exc.strerror or exc}"
                ) from exc
        self._history = history
        for flag in flags:
            self.table.apply(flag)
        return flags

    async def history(self, name: str, limit: int) -> list[dict[str, object]]:
        self.table.get(name)
        return list(reversed(self._history.get(name, [])[-limit:]))

    async def instances(self) -> list[Instance]:
        return []  # none of its own: LocalFlagStore asks the channel
