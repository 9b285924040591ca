"""The local state file: written atomically, read back at start, one section per writer.

The embedded store keeps its state here so it survives a restart (flags and their history,
measurement phases and sums, rollouts); with Redis, the control plane keeps its durable copy of
the flags here (to re-seed a Redis that came back empty) and each proxy keeps the last state it
applied (to start while Redis is down). What a section holds is its writer's business
(`state.flags.load_flags`, `state.measurements`, `state.rollouts`): this module knows none.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("abgate.flags")
FORMAT_VERSION = 1


class StateFile:
    """The state file. Its sections are kept here as last loaded or saved, so each writer
    replaces its own section and every save writes the whole file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._sections: dict[str, Any] = {}
        self._copy_failure: str | None = None
        # Several writers (the flags' copy, the rollouts' copy) save from worker threads:
        # one at a time, or one's section could be lost to the other's rename.
        self._saving = threading.Lock()

    def section(self, name: str) -> Any:
        """Another writer's section as loaded (None if absent)."""
        if not self._sections:
            self.read()
        return self._sections.get(name)

    def read(self) -> dict[str, Any]:
        """The whole file, read again (its sections kept); {} if absent or unreadable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.error("ignoring unreadable state file %s: %s", self.path, exc)
            return {}
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            log.error("ignoring corrupt state file %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict):
            log.error("ignoring state file %s: not a JSON object", self.path)
            return {}
        self._sections = {k: v for k, v in data.items() if k != "format"}
        return data

    def save_copy(self, what: str, **sections: Any) -> None:
        """A copy of state that lives elsewhere (Redis), `what` in the log: a failed write is
        logged once per cause, never raised, since the state itself is safe."""
        try:
            self.save_section(**sections)
        except OSError as exc:
            cause = f"{exc.strerror or exc}"
            if cause != self._copy_failure:
                log.error("cannot write the %s %s: %s", what, self.path, cause)
            self._copy_failure = cause
        else:
            self._copy_failure = None

    def save_section(self, **sections: Any) -> None:
        """Write the whole state to a temporary file and rename it over the old one; the
        in-memory sections change only once the file did."""
        with self._saving:
            self._save_locked(sections)

    def _save_locked(self, sections: dict[str, Any]) -> None:
        merged = {**self._sections, **sections}
        data = orjson.dumps({"format": FORMAT_VERSION, **merged}, option=orjson.OPT_INDENT_2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._sections = merged
