"""Configuration: the YAML file as frozen, typed values. Pure: the live state is in `state/`."""

from config.errors import ConfigError, Problem
from config.model import Config
from config.parse import load_config, parse_config

__all__ = ["Config", "ConfigError", "Problem", "load_config", "parse_config"]
