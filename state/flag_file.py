"""The local snapshot of flag state: written atomically, read back at start.

The embedded store keeps its state here so it survives a restart; with Redis, the control
plane keeps its durable copy here (to re-seed a Redis that came back empty) and each proxy
keeps the last state it applied (to start while Redis is down).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import orjson

from state.flags import Flag

log = logging.getLogger("abgate.flags")
FORMAT_VERSION = 1


def flag_from_json(data: dict[str, Any]) -> Flag:
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


class FlagFile:
    """The state file. Its sections (flags and their history; in the embedded mode also the
    measurement phases and sums) are kept here as last loaded or saved, so each writer
    replaces its own section and every save writes the whole file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._sections: dict[str, Any] = {}
        self._copy_failure: str | None = None
        # Several writers (the flags' copy, the rollouts' copy) save from worker threads:
        # one at a time, or one's section could be lost to the other's rename.
        self._saving = threading.Lock()

    def load(self) -> tuple[list[Flag], dict[str, list[dict[str, Any]]]]:
        """Flags and history from the file; nothing if it does not exist. A corrupt or
        unreadable file is logged and ignored (the config defaults apply), never fatal."""
        data = self._read()
        try:
            flags = [flag_from_json(item) for item in data.get("flags", [])]
            history = {str(k): list(v) for k, v in data.get("history", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.error("ignoring unreadable flag state in %s: %s", self.path, exc)
            return [], {}
        return flags, history

    def section(self, name: str) -> Any:
        """Another writer's section as loaded (None if absent)."""
        if not self._sections:
            self._read()
        return self._sections.get(name)

    def _read(self) -> dict[str, Any]:
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

    def save(self, flags: list[Flag], history: dict[str, list[dict[str, Any]]]) -> None:
        """The flag section; raises OSError when the file cannot be written."""
        self.save_section(flags=[flag_to_json(flag) for flag in flags], history=history)

    def save_copy(
        self, flags: list[Flag], history: dict[str, list[dict[str, Any]]] | None = None
    ) -> None:
        """A copy of state that lives elsewhere (Redis): a failed write is logged once per
        cause, never raised, since the flags themselves are safe."""
        try:
            self.save(flags, history or {})
        except OSError as exc:
            cause = f"{exc.strerror or exc}"
            if cause != self._copy_failure:
                log.error("cannot write the flag snapshot %s: %s", self.path, cause)
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
