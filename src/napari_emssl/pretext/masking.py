"""Random patch masking, (un)patchifying and fixed 2D sin-cos position embeddings.

Masking as in MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"):
per sample, shuffle the patch indices by sorting uniform noise and keep the first
``N * (1 - ratio)``; exactly the same number of patches is masked in every sample, so the
visible tokens form a dense ``(B, N_keep, C)`` tensor.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["random_masking", "patchify", "unpatchify", "sincos_pos_embed_2d", "pixel_mask", "keep_count"]


def keep_count(n: int, ratio: float) -> int:
    """Visible patches out of ``n`` at mask ``ratio`` (at least 1, at most ``n - 1`` when n > 1)."""
    keep = int(round(n * (1.0 - ratio)))
    return max(1, min(keep, n - 1)) if n > 1 else 1


def random_masking(batch: int, n: int, ratio: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masks of ``n`` patches.

    Returns ``ids_keep`` (B, N_keep) indices of the visible patches, ``ids_restore`` (B, N)
    (sorting by it undoes the shuffle) and ``mask`` (B, N) float, 1 = masked, 0 = visible.
    """
    keep = keep_count(n, ratio)
    noise = torch.rand(batch, n, device=device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, n, device=device)
    mask[:, :keep] = 0
    mask = mask.gather(1, ids_restore)
    return ids_keep, ids_restore, mask


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C), patches in row-major order like the ViT tokens."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, grid: tuple[int, int], channels: int = 1) -> torch.Tensor:
    """Inverse of :func:`patchify` for a ``grid`` of (h, w) patches."""
    b = patches.shape[0]
    h, w = grid
    x = patches.reshape(b, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, h * p, w * p)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (1, h*w, dim) as in MAE's decoder; ``dim`` divisible by 4."""
    h, w = grid
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(1, quarter))
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32), torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    out_y = ys.reshape(-1, 1) * omega.view(1, -1)
    out_x = xs.reshape(-1, 1) * omega.view(1, -1)
    emb = torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)
    if emb.shape[1] < dim:
        emb = F.pad(emb, (0, dim - emb.shape[1]))
    return emb.unsqueeze(0)


def pixel_mask(batch: int, shape: tuple[int, int], patch: int, ratio: float, device: torch.device) -> torch.Tensor:
    """(B, 1, H, W) float mask, 1 on masked ``patch`` x ``patch`` squares (exactly ``ratio`` of the
    grid per sample, grid cells cut at the border when H or W is not a multiple of ``patch``)."""
    h, w = shape
    gh, gw = -(-h // patch), -(-w // patch)
    _, _, mask = random_masking(batch, gh * gw, ratio, device)
    mask = mask.view(batch, 1, gh, gw)
    mask = mask.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
    return mask[:, :, :h, :w]
