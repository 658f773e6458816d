"""Validated run configurations (one dataclass per run kind)."""

from .finetune import TASKS, FinetuneConfig, PredictConfig

__all__ = ["TASKS", "FinetuneConfig", "PredictConfig"]
