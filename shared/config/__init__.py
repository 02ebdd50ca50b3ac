"""Typed configs: YAML presets + ``key=value`` overrides, validated. See ``base`` for the mechanism
and ``job`` for the fields every stage job shares."""
from shared.config.base import (CONFIGS_DIR, REPO_ROOT, ConfigError, deep_merge, describe, from_dict,
                                help_field, load_config, parse_overrides, preset_path, read_yaml, require_positive,
                                to_dict)
from shared.config.job import JobConfig, Precision, TrainJobConfig, TrainLoopConfig

__all__ = ["CONFIGS_DIR", "REPO_ROOT", "ConfigError", "JobConfig", "Precision", "TrainJobConfig", "TrainLoopConfig",
           "deep_merge", "describe", "from_dict", "help_field", "load_config", "parse_overrides", "preset_path",
           "read_yaml", "require_positive", "to_dict"]
