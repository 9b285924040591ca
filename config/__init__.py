"""Configuration: the YAML file as frozen, typed values. Pure: the live state is in `state/`."""

from abgate.config.errors import ConfigError, Problem
from abgate.config.model import Config
from abgate.config.parse import load_config, parse_config

__all__ = ["Config", "ConfigError", "Problem", "load_config", "parse_config"]
