"""Validated run configurations (one dataclass per run kind)."""

from .finetune import FACTORS, RESTORATION_TASKS, TASKS, FinetuneConfig, PredictConfig
from .pretrain import METHODS, PretrainConfig

__all__ = ["TASKS", "RESTORATION_TASKS", "FACTORS", "METHODS", "FinetuneConfig", "PredictConfig", "PretrainConfig"]
