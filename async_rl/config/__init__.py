"""Flags, YAML and their typed sections."""

from async_rl.config.parser import Config, ConfigError, build_parser, parse_config

__all__ = ["Config", "ConfigError", "build_parser", "parse_config"]
