"""Flags, YAML and their typed sections."""

from async_rl.config.parser import Config, Launch, build_parser, parse_config
from async_rl.errors import ConfigError

__all__ = ["Config", "ConfigError", "Launch", "build_parser", "parse_config"]
