"""abgate's errors: one family under `AbgateError`, and the one a configuration raises.

AbgateError
├── ConfigError              a configuration refused: every problem found, each with its place
│   └── config/layers.py: BaseRefused   the file a configuration extends refused as a whole
├── config/: Invalid         one value refused (config.fields), reported as one of its Problems
├── state/: StoreUnavailable, SecretUnavailable, VersionConflict, RolloutConflict,
│           UnknownFlag (a KeyError too), RemoteError (the live-state channel's other end)
├── proxy/: UpstreamError and its kinds (proxy/errors.py), BodyTooLarge, ClientGone,
│           ClientTooSlow (the client's side), PathRefused (a ValueError too)
└── control/: RolloutError (UnknownRollout, NoRolloutPlan), ApiError (the control API's
              answer), ApiCallFailed (the flags CLI), SimulationError, StatsInputError
              (input the statistics cannot be computed from; a ValueError too)

The domain says what went wrong; an HTTP status is chosen where an answer is made: the control
API's handlers and middleware (control/http.py `errors_as_json`, control/rollout_api.py), and
for the data plane the handler that answers a request (`UpstreamError.status` is the gateway's
answer to that upstream failure). Errors of libraries are mapped at their boundary
(`state.errors.store_errors`, proxy/upstream.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration file, where it is, and why."""

    path: str
    line: int | None
    message: str
    file: str | None = None  # when not the file loaded: the base file it extends

    def __str__(self) -> str:
        where = self.path or "<document>"
        place = f"{self.file} line" if self.file is not None else "line"
        if self.line is not None:
            where = f"{where} ({place} {self.line})"
        elif self.file is not None:
            where = f"{where} ({self.file})"
        return f"{where}: {self.message}"


class AbgateError(Exception):
    """The root of abgate's own errors."""


class ConfigError(AbgateError):
    """A configuration was refused; `problems` lists everything that is wrong with it."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{self.source}: {count} {noun}"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)
