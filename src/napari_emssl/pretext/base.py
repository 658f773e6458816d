"""The contract every self-supervised method follows, so that one training loop runs them all.

A :class:`Pretext` is an ``nn.Module`` that owns every trainable part of a method (for
pix2pix: generator and discriminator; for MAE: encoder and decoder; for MoCo v3: the query
and momentum encoders with their heads). The loop (``engine.pretrainer``) knows only this
interface:

* ``phases`` names one optimiser per phase; each step the loop runs the phases in order:
  zero that optimiser's gradients, ``losses = module(batch, phase)``, backward
  ``losses["loss"]``, clip, step. Other keys of the dict are logged (as floats).
* ``optimiser_groups()`` and ``optimiser_settings()`` give each phase its parameters and
  hyper-parameters (the method's published defaults).
* ``after_step()`` runs after all phases (momentum updates and the like).
* ``pretrained_state()`` returns the weights a downstream network can start from, keyed by
  the parameter names of ``create_model(self.arch, ...)`` so that
  :func:`napari_emssl.engine.transfer.load_matching` copies them by name.
* ``preview()`` returns a reconstruction to show while training (or ``None``).

Batches are float tensors ``(B, 1, H, W)`` of percentile-normalised images (about 0..1),
random crops already flipped and rotated by the data loader; each method makes its own
views (noise, blur, masks) on the batch's device.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Pretext(nn.Module):
    method: ClassVar[str] = ""
    phases: ClassVar[tuple[str, ...]] = ("main",)

    def __init__(self, arch: str, arch_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.arch = arch  # registry name of the downstream network the weights are meant for
        self.arch_kwargs = dict(arch_kwargs or {})

    def forward(self, batch: torch.Tensor, phase: str = "main") -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def optimiser_groups(self) -> dict[str, list[nn.Parameter]]:
        """Phase name -> the parameters its optimiser updates (trainable ones only)."""
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    def optimiser_settings(self) -> dict[str, dict[str, Any]]:
        """Phase name -> AdamW keyword arguments (lr, betas, weight_decay)."""
        return {"main": {"lr": 1.5e-4, "betas": (0.9, 0.95), "weight_decay": 0.05}}

    def after_step(self, step: int, total_steps: int) -> None:
        """Called once per step after every phase's optimiser step (e.g. a momentum update)."""

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """Weights for the downstream network, keyed by its parameter names."""
        raise NotImplementedError

    @torch.no_grad()
    def preview(self, batch: torch.Tensor) -> torch.Tensor | None:
        """An image ``(B, 1, H, W)`` showing what the method does now, or ``None``."""
        return None
