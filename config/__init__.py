"""Configuration: the YAML file as frozen, typed values. Pure: the live state is in `state/`.

The parser (`load_config`, `parse_config`: YAML and the pydantic schema) is imported on
first use, so the data plane's modules, which read only `config.model`, never load them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abgate.config.errors import ConfigError, Problem
from abgate.config.model import Config

if TYPE_CHECKING:
    from abgate.config.parse import load_config, parse_config

__all__ = ["Config", "ConfigError", "Problem", "load_config", "parse_config"]


def __getattr__(name: str) -> Any:
    if name in ("load_config", "parse_config"):
        from abgate.config import parse

        return getattr(parse, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
