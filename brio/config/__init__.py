"""Brio's configuration: TOML file plus ``BRIO_*`` environment, checked into ``BrioConfig``."""

from brio.config.errors import ConfigError
from brio.config.load import LoadedConfig, find_config_file, load_config
from brio.config.model import BrioConfig
from brio.config.redact import redacted

__all__ = [
    "BrioConfig",
    "ConfigError",
    "LoadedConfig",
    "find_config_file",
    "load_config",
    "redacted",
]
