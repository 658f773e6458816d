"""Masked autoencoders (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

:class:`ViTMAE` (ViT architectures): 75 % of the 16 x 16 patch tokens are masked at random
per sample; the ViT encoder (timm blocks called here) runs on the visible tokens only; a
light transformer decoder (width ``decoder_dim`` 128, ``decoder_depth`` 2: smaller than the
paper's 512 x 8, sized for ViT-tiny and desktop GPUs) receives the encoded tokens plus a
shared learned mask token at the masked positions, with a fixed 2D sin-cos position
embedding of the current grid, and predicts the pixels of every patch. The loss is the MSE
on the masked patches only, against per-patch normalised pixels (the paper's
``norm_pix_loss``).

:class:`MaskedCNN` (residual U-Nets, HRNet, smp U-Nets): masked image modelling at the
input, since masked regions would leak through convolutions otherwise: random square
patches (16 px, or the network's size multiple if larger) covering 60 % of the image are
replaced by the sample's mean visible intensity, the whole network (one output channel)
reconstructs the image, and the MSE counts masked pixels only. Masked pixels never enter
the network.

Optimiser (MAE): AdamW, betas (0.9, 0.95), weight decay 0.05, lr = ``base_lr`` 1.5e-4 x
``batch_size`` / 256, floored at ``min_lr`` 1e-4 (the linear rule gives 1e-5 for a batch of
16, too slow for the short runs this plugin makes); ``lr`` overrides both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ._common import build_network, check_fraction, check_positive, prefixed_state, scaled_lr
from .base import Pretext
from .masking import patchify, pixel_mask, random_masking, sincos_pos_embed_2d, unpatchify

__all__ = ["ViTMAE", "MaskedCNN", "MAEDecoder"]

NORM_EPS = 1e-6


class MAEDecoder(nn.Module):
    """Light transformer decoder: embed, insert mask tokens, unshuffle, sin-cos positions, blocks, predict pixels."""

    def __init__(self, embed_dim: int, dim: int, depth: int, heads: int, patch: int, channels: int = 1) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block  # slow import: only when building

        if dim % heads or dim % 4:
            raise InputError(f"decoder_dim ({dim}) must be divisible by 4 and by decoder_heads ({heads})")
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch * patch * channels)
        self.dim = dim
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.embed(latent)
        b, keep, d = x.shape
        n = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(b, n - keep, d)], dim=1)
        x = x.gather(1, ids_restore.unsqueeze(-1).expand(b, n, d))  # back to raster order
        x = x + sincos_pos_embed_2d(d, grid, x.device).to(x.dtype)
        return self.pred(self.norm(self.blocks(x)))


class ViTMAE(Pretext):
    """MAE on a ViT of the registry (``vit_*``); see the module docstring."""

    method = "mae"
    phases = ("main",)

    def __init__(
        self,
        arch: str,
        arch_kwargs: dict[str, Any] | None = None,
        *,
        mask_ratio: float = 0.75,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        base_lr: float = 1.5e-4,
        batch_size: int = 256,
        min_lr: float = 1e-4,
        lr: float | None = None,
        weight_decay: float = 0.05,
    ) -> None:
        super().__init__(arch, arch_kwargs)
        self.mask_ratio = check_fraction("mask_ratio", mask_ratio)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.lr = scaled_lr(None if lr is None else check_positive("lr", lr), check_positive("base_lr", base_lr),
                            check_positive("batch_size", batch_size, True), float(min_lr))
        self.weight_decay = float(weight_decay)
        net = build_network(arch, self.arch_kwargs)
        self.encoder = net.encoder  # the timm ViT; the downstream decoder is not pretrained
        self.patch = int(net.size_multiple)
        self.embed_dim = int(net.embed_dim)
        self.decoder = MAEDecoder(
            self.embed_dim,
            check_positive("decoder_dim", decoder_dim, True),
            check_positive("decoder_depth", decoder_depth, True),
            check_positive("decoder_heads", decoder_heads, True),
            self.patch,
        )

    # -- encoder ---------------------------------------------------------------------------

    def _visible_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        from ..models.vit import vit_tokens

        tokens, grid = vit_tokens(self.encoder, x)
        b, n, c = tokens.shape
        ids_keep, ids_restore, mask = random_masking(b, n, self.mask_ratio, x.device)
        visible = tokens.gather(1, ids_keep.unsqueeze(-1).expand(b, ids_keep.shape[1], c))
        return visible, mask, ids_restore, grid

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Encode the visible tokens only: ``latent (B, N_keep, C)``, ``mask (B, N)`` (1 = masked),
        ``ids_restore (B, N)`` and the patch grid ``(h, w)``."""
        visible, mask, ids_restore, grid = self._visible_tokens(x)
        latent = self.encoder.norm(self.encoder.blocks(visible))
        return latent, mask, ids_restore, grid

    # -- loss ------------------------------------------------------------------------------

    def _target(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        patches = patchify(x.float(), self.patch)
        mean = patches.mean(dim=-1, keepdim=True)
        std = (patches.var(dim=-1, keepdim=True) + NORM_EPS).sqrt()
        if not self.norm_pix_loss:
            return patches, torch.zeros_like(mean), torch.ones_like(std)
        return (patches - mean) / std, mean, std

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        if x.shape[-1] % self.patch or x.shape[-2] % self.patch:
            raise InputError(f"{self.method} pretext: H and W must be multiples of {self.patch}, got {tuple(x.shape[-2:])}")
        latent, mask, ids_restore, grid = self.encode(x)
        return self.decoder(latent, ids_restore, grid).float(), mask, grid

    def forward(self, batch: torch.Tensor, phase: str = "main") -> dict[str, torch.Tensor]:
        pred, mask, _ = self._predict(batch)
        target, _, _ = self._target(batch)
        per_patch = (pred - target).square().mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum()
        visible_mse = (per_patch * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1)
        return {"loss": loss, "visible_mse": visible_mse.detach()}

    def optimiser_settings(self) -> dict[str, dict[str, Any]]:
        return {"main": {"lr": self.lr, "betas": (0.9, 0.95), "weight_decay": self.weight_decay}}

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return prefixed_state(self.encoder, "encoder.")

    @torch.no_grad()
    def preview(self, batch: torch.Tensor) -> torch.Tensor:
        """Reconstruction of the masked patches (de-normalised with each patch's own statistics,
        as in the MAE paper's figures) with the visible patches pasted back."""
        pred, mask, grid = self._predict(batch)
        target, mean, std = self._target(batch)
        pixels = target * std + mean
        recon = pred * std + mean
        m = mask.unsqueeze(-1)
        return unpatchify(recon * m + pixels * (1 - m), self.patch, grid)


class MaskedCNN(Pretext):
    """Masked image modelling at the input for a CNN of the registry; see the module docstring."""

    method = "mae"
    phases = ("main",)

    def __init__(
        self,
        arch: str,
        arch_kwargs: dict[str, Any] | None = None,
        *,
        mask_ratio: float = 0.6,
        mask_patch: int | None = None,
        base_lr: float = 1.5e-4,
        batch_size: int = 256,
        min_lr: float = 1e-4,
        lr: float | None = None,
        weight_decay: float = 0.05,
    ) -> None:
        super().__init__(arch, arch_kwargs)
        self.mask_ratio = check_fraction("mask_ratio", mask_ratio)
        self.lr = scaled_lr(None if lr is None else check_positive("lr", lr), check_positive("base_lr", base_lr),
                            check_positive("batch_size", batch_size, True), float(min_lr))
        self.weight_decay = float(weight_decay)
        self.net = build_network(arch, self.arch_kwargs, out_channels=1)
        multiple = int(self.net.size_multiple)
        self.mask_patch = max(16, multiple) if mask_patch is None else check_positive("mask_patch", mask_patch, True)

    def masked_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` with masked squares replaced by each sample's mean visible intensity, and the mask (1 = masked)."""
        with torch.no_grad():
            x = x.float()
            mask = pixel_mask(x.shape[0], (x.shape[-2], x.shape[-1]), self.mask_patch, self.mask_ratio, x.device)
            visible = 1 - mask
            fill = (x * visible).sum(dim=(2, 3), keepdim=True) / visible.sum(dim=(2, 3), keepdim=True).clamp_min(1)
            return x * visible + fill * mask, mask

    def forward(self, batch: torch.Tensor, phase: str = "main") -> dict[str, torch.Tensor]:
        x = batch.float()
        inp, mask = self.masked_input(x)
        err = (self.net(inp).float() - x).square()
        loss = (err * mask).sum() / mask.sum().clamp_min(1)
        visible_mse = (err * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1)
        return {"loss": loss, "visible_mse": visible_mse.detach()}

    def optimiser_settings(self) -> dict[str, dict[str, Any]]:
        return {"main": {"lr": self.lr, "betas": (0.9, 0.95), "weight_decay": self.weight_decay}}

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return prefixed_state(self.net, "")

    @torch.no_grad()
    def preview(self, batch: torch.Tensor) -> torch.Tensor:
        """The network's reconstruction on the masked squares, the input elsewhere."""
        x = batch.float()
        inp, mask = self.masked_input(x)
        return self.net(inp).float() * mask + x * (1 - mask)
