"""Validated run configurations (one dataclass per run kind)."""

from .finetune import TASKS, FinetuneConfig, PredictConfig
from .pretrain import METHODS, PretrainConfig

__all__ = ["TASKS", "METHODS", "FinetuneConfig", "PredictConfig", "PretrainConfig"]
