"""The running config as plain JSON values, for GET /api/config, with secrets masked."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from config.model import Config


def mask_url(url: str) -> str:
    """redis://user:secret@host -> redis://user:***@host; anything unparsable is hidden."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def config_as_json(config: Config) -> dict[str, Any]:
    out = _plain(config)
    assert isinstance(out, dict)
    if config.flags.redis_url:
        out["flags"]["redis_url"] = mask_url(config.flags.redis_url)
    if config.history.postgres_url:
        out["history"]["postgres_url"] = mask_url(config.history.postgres_url)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, frozenset):
        return sorted(_plain(item) for item in value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, re.Pattern):
        return value.pattern
    return value
