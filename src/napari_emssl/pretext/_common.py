"""Small helpers shared by the pretext methods (building networks, renaming weights, options)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..models import create_model, model_info

__all__ = ["arch_family", "build_network", "prefixed_state", "scaled_lr", "check_fraction", "check_positive"]

CNN_FAMILIES = ("resunet", "hrnet", "smp_unet")


def arch_family(arch: str) -> str:
    """Registry family of ``arch`` (``resunet``, ``hrnet``, ``smp_unet``, ``vit``)."""
    return model_info(arch).family


def build_network(arch: str, arch_kwargs: dict[str, Any], out_channels: int = 1) -> nn.Module:
    """``create_model(arch, in_channels=1, out_channels, **arch_kwargs)`` (the downstream network)."""
    return create_model(arch, 1, out_channels, **arch_kwargs)


def prefixed_state(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` detached and copied, every key prefixed with ``prefix``."""
    return {prefix + k: v.detach().clone() for k, v in module.state_dict().items()}


def scaled_lr(lr: float | None, base_lr: float, batch_size: int, min_lr: float) -> float:
    """The linear scaling rule ``base_lr * batch_size / 256`` (Goyal et al. 2017, used by MAE and
    MoCo v3), floored at ``min_lr`` so that the small batches of a desktop GPU still train;
    an explicit ``lr`` wins."""
    if lr is not None:
        return float(lr)
    return max(float(base_lr) * int(batch_size) / 256.0, float(min_lr))


def check_fraction(label: str, value: Any, low: float = 0.0, high: float = 1.0) -> float:
    """``value`` as a float strictly between ``low`` and ``high`` (else :class:`InputError`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise InputError(f"{label} must be a number between {low} and {high} (exclusive), got {value!r}")
    return float(value)


def check_positive(label: str, value: Any, integer: bool = False) -> Any:
    """``value`` as a positive number (int when ``integer``), else :class:`InputError`."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "integer" if integer else "number"
        raise InputError(f"{label} must be a positive {kind}, got {value!r}")
    return int(value) if integer else float(value)
