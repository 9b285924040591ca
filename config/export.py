"""The running config as plain JSON values, for GET /api/config, with secrets masked."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from abgate.config.model import Config

# Query parameters that carry a secret (libpq and redis-py accept the password there too).
_SECRET_PARAMETERS = re.compile(r"(?i)(^|&)((?:ssl_?)?password)=[^&]*")


def mask_url(url: str) -> str:
    """redis://user:secret@host -> redis://user:***@host (a user alone, which may be a
    token: ***@host), ?password=secret -> ?password=***; anything unparsable is hidden."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    query = _SECRET_PARAMETERS.sub(r"\1\2=***", parts.query)
    if parts.password is None and not parts.username:
        return urlunsplit(parts._replace(query=query)) if query != parts.query else url
    host = parts.hostname or ""
    if ":" in host:  # IPv6, bracketed again
        host = f"[{host}]"
    user = f"{parts.username or ''}:***" if parts.password is not None else "***"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}{port}", query=query))


def has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.password is not None or bool(parts.username)


def config_as_json(config: Config) -> dict[str, Any]:
    """Every URL masked (the Redis and PostgreSQL URLs, and upstream URLs, whose
    credentials abgate never sends but a person may have written)."""
    out = _plain(config)
    assert isinstance(out, dict)
    _mask_urls(out)
    return out


def credential_notes(config: Config) -> list[str]:
    """What check-config says about upstream URLs with credentials: abgate never sends them
    (no Authorization is made from a URL), so they only leak where the config is shown."""
    return [
        f"upstreams.{name}.url: the credentials in this URL are not sent to the upstream "
        "(abgate makes no Authorization header from a URL); set the header where the "
        "upstream needs it, and remove them from the URL"
        for name, upstream in config.upstreams.items()
        if has_credentials(upstream.url)
    ]


def _mask_urls(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and (key == "url" or key.endswith("_url")):
                value[key] = mask_url(item)
            else:
                _mask_urls(item)
    elif isinstance(value, list):
        for item in value:
            _mask_urls(item)


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
