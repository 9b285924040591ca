"""Durations as written in YAML (a number of seconds, or `250ms`, `5s`, `2m`, `1h`, `90d`) in
seconds: the one reading `config.fields.check_duration` judges a setting with and
`config.model`'s defaults are made with (pure; no bounds, no messages)."""

from __future__ import annotations

import re
from typing import Any

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_WRITTEN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def read_seconds(value: Any) -> float | None:
    """`value` in seconds, or None when it is not a duration."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (match := _WRITTEN.match(value)):
        return float(match.group(1)) * _UNITS[match.group(2)]
    return None


def seconds(written: str) -> float:
    """A duration this code writes (a default), in seconds."""
    value = read_seconds(written)
    if value is None:
        raise ValueError(f"not a duration: {written!r}")
    return value
