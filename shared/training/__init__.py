"""Pretraining: our loop (``pretrain_loop``), run under Ray Train (``runner``), schedules and optimizer."""
from shared.training.pretrain_config import DataConfig, ModelConfig, OptimConfig, PretrainConfig
from shared.training.schedules import SCHEDULES, lr_at

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "PretrainConfig", "SCHEDULES", "lr_at"]
