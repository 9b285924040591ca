"""The local snapshot of flag state: written atomically, read back at start.

The embedded store keeps its state here so it survives a restart; with Redis, the control
plane keeps its durable copy here (to re-seed a Redis that came back empty) and each proxy
keeps the last state it applied (to start while Redis is down).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from config.flags import Flag

log = logging.getLogger("abgate.flags")
FORMAT_VERSION = 1


def flag_from_json(data: dict[str, Any]) -> Flag:
    return Flag(name=str(data["name"]), basis_points=int(data["basis_points"]),
                version=int(data["version"]), updated_at=float(data["updated_at"]),
                updated_by=str(data["updated_by"]), reason=str(data["reason"]))


def flag_to_json(flag: Flag) -> dict[str, Any]:
    return {"name": flag.name, "basis_points": flag.basis_points, "version": flag.version,
            "updated_at": flag.updated_at, "updated_by": flag.updated_by,
            "reason": flag.reason}


class FlagFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> tuple[list[Flag], dict[str, list[dict[str, Any]]]]:
        """Flags and history from the file; nothing if it does not exist. A corrupt file is
        logged and ignored (the config defaults apply), never fatal."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return [], {}
        try:
            data = orjson.loads(raw)
            flags = [flag_from_json(item) for item in data["flags"]]
            history = {str(k): list(v) for k, v in data.get("history", {}).items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error("ignoring unreadable flag state file %s: %s", self.path, exc)
            return [], {}
        return flags, history

    def save(self, flags: list[Flag], history: dict[str, list[dict[str, Any]]]) -> None:
        """Write the whole state to a temporary file and rename it over the old one."""
        data = orjson.dumps({"format": FORMAT_VERSION,
                             "flags": [flag_to_json(flag) for flag in flags],
                             "history": history}, option=orjson.OPT_INDENT_2)
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
