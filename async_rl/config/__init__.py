"""Flags, YAML and their typed sections."""

from async_rl.config.parser import Config, ConfigError, Launch, build_parser, parse_config

__all__ = ["Config", "ConfigError", "Launch", "build_parser", "parse_config"]
