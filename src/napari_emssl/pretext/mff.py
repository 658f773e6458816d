"""MFF: multi-level feature fusion for masked image modelling (Liu et al., ICCV 2023,
"Improving Pixel-based MIM by Reducing Wasted Modeling Capability").

MAE (:class:`~napari_emssl.pretext.mae.ViTMAE`) plus a fusion of several encoder layers
before the decoder: the outputs of the shallow layers (for a 12-block ViT: blocks 0, 2, 4,
6, 8; the list is scaled to other depths) pass through one linear projection each, the
last block's output through the encoder's final norm, and their average weighted by
learned softmax weights (initially equal) is what the decoder receives. Low-level layers
thereby carry pixel detail that the last layer no longer has to model. The projections and
fusion weights are pretext-only; the encoder's weights are the pretrained state.
ViT architectures only.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import InputError
from .mae import ViTMAE

__all__ = ["MFFPretext", "default_fusion_layers"]

#: the paper's layers for a 12-block ViT
PAPER_FUSION_LAYERS = (0, 2, 4, 6, 8, 11)


def default_fusion_layers(depth: int) -> list[int]:
    """The paper's layers (0, 2, 4, 6, 8, 11 of 12) scaled to ``depth`` blocks (duplicates dropped)."""
    return sorted({round(layer * (depth - 1) / 11) for layer in PAPER_FUSION_LAYERS})


class MFFPretext(ViTMAE):
    """MAE with multi-level feature fusion; options as :class:`ViTMAE` plus ``fusion_layers``."""

    method = "mff"

    def __init__(
        self, arch: str, arch_kwargs: dict[str, Any] | None = None, *, fusion_layers: Sequence[int] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(arch, arch_kwargs, **options)
        depth = len(self.encoder.blocks)
        layers = default_fusion_layers(depth) if fusion_layers is None else list(fusion_layers)
        if not layers or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < depth for i in layers):
            raise InputError(f"fusion_layers must be block indices from 0 to {depth - 1}, got {fusion_layers!r}")
        layers = sorted(set(layers) | {depth - 1})  # the last block is always fused
        self.fusion_layers = layers
        self.fusion_proj = nn.ModuleList(nn.Linear(self.embed_dim, self.embed_dim) for _ in layers[:-1])
        self.fusion_logits = nn.Parameter(torch.zeros(len(layers)))

    def fusion_weights(self) -> torch.Tensor:
        """Softmax weights of the fused layers (shallow to deep)."""
        return self.fusion_logits.float().softmax(dim=0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        visible, mask, ids_restore, grid = self._visible_tokens(x)
        wanted = set(self.fusion_layers)
        features = []
        h = visible
        for i, block in enumerate(self.encoder.blocks):
            h = block(h)
            if i in wanted:
                features.append(h)
        parts = [proj(f) for proj, f in zip(self.fusion_proj, features[:-1])] + [self.encoder.norm(features[-1])]
        weights = self.fusion_weights()
        fused = sum(w.to(p.dtype) * p for w, p in zip(weights, parts))
        return fused, mask, ids_restore, grid
