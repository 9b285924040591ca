"""The running config as plain JSON values, for GET /api/config, with secrets masked."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from config.model import Config

# Query parameters that carry a secret (libpq and redis-py accept the password there too).
_SECRET_PARAMETERS = re.compile(r"(?i)(^|&)((?:ssl_?)?password)=[^&]*")


def mask_url(url: str) -> str:
    """redis://user:secret@host -> redis://user:***@host, ?password=secret -> ?password=***;
    anything unparsable is hidden."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    query = _SECRET_PARAMETERS.sub(r"\1\2=***", parts.query)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        parts = parts._replace(netloc=f"{user}:***@{host}{port}")
    return urlunsplit(parts._replace(query=query))


def config_as_json(config: Config) -> dict[str, Any]:
    out = _plain(config)
    assert isinstance(out, dict)
    # Passwords are references (an environment variable's name, a file's path) everywhere
    # but in URLs, where they are masked.
    if config.flags.redis is not None and config.flags.redis.url:
        out["flags"]["redis"]["url"] = mask_url(config.flags.redis.url)
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
