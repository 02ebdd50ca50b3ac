"""Pretraining: our loop (``pretrain_loop``), run under Ray Train (``runner``), schedules and optimizer."""
from shared.training.pretrain_config import CPTConfig, DataConfig, ModelConfig, PretrainConfig, PretrainLoopConfig
from shared.training.schedules import SCHEDULES, lr_at

__all__ = ["CPTConfig", "DataConfig", "ModelConfig", "PretrainConfig", "PretrainLoopConfig", "SCHEDULES", "lr_at"]
