"""Typed configs: YAML presets + ``key=value`` overrides, validated. See ``base`` for the mechanism."""
from shared.config.base import (CONFIGS_DIR, REPO_ROOT, ConfigError, deep_merge, describe, from_dict,
                                help_field, load_config, parse_overrides, preset_path, read_yaml, require_positive,
                                to_dict)

__all__ = ["CONFIGS_DIR", "REPO_ROOT", "ConfigError", "deep_merge", "describe", "from_dict", "help_field",
           "load_config", "parse_overrides", "preset_path", "read_yaml", "require_positive", "to_dict"]
