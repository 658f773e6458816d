"""Validated run configurations (one dataclass per run kind)."""

from .finetune import BACK_PROJECTION, DENOISE_LOSSES, FACTORS, LEAK_AUTO, LEAK_AUTO_MAX, LEAK_CORRECTION, MASK_REPLACEMENTS, MEAN_CORRECTION, RESTORATION_TASKS, TASKS, TTA_AUTO_MAX_PIXELS, FinetuneConfig, PredictConfig
from .pretrain import METHODS, PretrainConfig

__all__ = ["TASKS", "RESTORATION_TASKS", "FACTORS", "MASK_REPLACEMENTS", "DENOISE_LOSSES", "MEAN_CORRECTION", "LEAK_CORRECTION", "LEAK_AUTO", "LEAK_AUTO_MAX", "BACK_PROJECTION", "TTA_AUTO_MAX_PIXELS", "METHODS", "FinetuneConfig", "PredictConfig", "PretrainConfig"]
