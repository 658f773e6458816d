"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers").

Two augmented views of every image (:mod:`.views`) go through a query encoder + projector
(3-layer MLP with BN, hidden 1024, output 256; the paper uses 4096) + predictor (2-layer
MLP) and through a momentum key encoder + projector (deep copies, no gradient). The loss is
the symmetric InfoNCE ``ctr(q1, k2) + ctr(q2, k1)`` with temperature 0.2, each term scaled
by ``2 * tau`` as in the paper's pseudo-code; keys of all processes are negatives when
``torch.distributed`` is initialised. The key networks follow the query networks with a
momentum that rises from 0.99 to 1 by a half cosine over the run (:meth:`after_step`).

Encoders: for ViTs the registry model's timm ``encoder`` with the patch embedding frozen at
its random initialisation (the paper's stabilisation trick), features = mean of the final
(normed) tokens (no class token); for CNNs the registry model's ``encoder`` (a list of
feature maps), features = global average pools of every map the encoder returns, concatenated.

Optimiser: AdamW, betas (0.9, 0.999), weight decay 0.1, lr = ``base_lr`` 1.5e-4 x
``batch_size`` / 256 floored at ``min_lr`` 1e-4 (``lr`` overrides both). The CNN variant
uses the same AdamW recipe (the paper's ResNets use LARS).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ._common import arch_family, build_network, check_positive, prefixed_state, scaled_lr
from .base import Pretext
from .views import ViewSettings, make_view

__all__ = ["MoCoV3Pretext", "mlp", "momentum_at"]


def mlp(layers: int, in_dim: int, hidden: int, out: int, last_bn: bool) -> nn.Sequential:
    """MoCo v3's MLP: (Linear without bias, BN, ReLU) x (layers - 1), Linear, optional BN without affine."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        dim = hidden
    mods.append(nn.Linear(dim, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)


def momentum_at(step: int, total_steps: int, base: float) -> float:
    """Cosine schedule from ``base`` (step 0) to 1 (last step)."""
    progress = min(max(step / max(1, total_steps), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def _gather(keys: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Keys of every process (no gradient) and this process's offset into them."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return keys, 0
    world = torch.distributed.get_world_size()
    if world == 1:
        return keys, 0
    parts = [torch.empty_like(keys) for _ in range(world)]
    torch.distributed.all_gather(parts, keys.contiguous())
    return torch.cat(parts, dim=0), torch.distributed.get_rank() * keys.shape[0]


class _ViTFeatures(nn.Module):
    """A timm ViT as a feature extractor: mean of the final normed tokens."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..models.vit import vit_tokens

        tokens, _ = vit_tokens(self.encoder, x)
        return self.encoder.norm(self.encoder.blocks(tokens)).mean(dim=1)


class _CNNFeatures(nn.Module):
    """A registry CNN's encoder as a feature extractor: the global average pools of every map it returns, concatenated.

    Pooling every scale, not only the deepest, trains every part of the encoder that the
    downstream network uses: HRNet's encoder returns four parallel branches whose last
    fuse layers feed only the shallower ones, and a U-Net decoder reads every skip.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([f.mean(dim=(2, 3)) for f in self.encoder(x)], dim=1)


class MoCoV3Pretext(Pretext):
    """MoCo v3 for ViT and CNN encoders of the registry; see the module docstring."""

    method = "mocov3"
    phases = ("main",)

    def __init__(
        self,
        arch: str,
        arch_kwargs: dict[str, Any] | None = None,
        *,
        proj_hidden: int = 1024,
        proj_dim: int = 256,
        pred_hidden: int | None = None,
        temperature: float = 0.2,
        momentum: float = 0.99,
        base_lr: float = 1.5e-4,
        batch_size: int = 256,
        min_lr: float = 1e-4,
        lr: float | None = None,
        weight_decay: float = 0.1,
        freeze_patch_embed: bool = True,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        jitter: float = 1.0,
    ) -> None:
        super().__init__(arch, arch_kwargs)
        from ..errors import InputError

        self.temperature = check_positive("temperature", temperature)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise InputError(f"momentum must be a number from 0 to 1, got {momentum!r}")
        self.base_momentum = float(momentum)
        self.momentum = float(momentum)
        self.lr = scaled_lr(None if lr is None else check_positive("lr", lr), check_positive("base_lr", base_lr),
                            check_positive("batch_size", batch_size, True), float(min_lr))
        self.weight_decay = float(weight_decay)
        lo, hi = (float(v) for v in crop_scale)
        if not 0 < lo <= hi <= 1:
            raise InputError(f"crop_scale must be two numbers 0 < low <= high <= 1, got {crop_scale!r}")
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise InputError(f"jitter must be a number from 0 to 1, got {jitter!r}")
        self.view_settings = ViewSettings(crop_scale=(lo, hi)).scaled(float(jitter))

        net = build_network(arch, self.arch_kwargs)
        self.is_vit = arch_family(arch) == "vit"
        if self.is_vit:
            self.features = _ViTFeatures(net.encoder)
            if freeze_patch_embed:
                net.encoder.patch_embed.requires_grad_(False)
            dim = int(net.embed_dim)
        else:
            self.features = _CNNFeatures(net.encoder)
            dim = self._probe_dim(net)
        hidden = check_positive("proj_hidden", proj_hidden, True)
        out = check_positive("proj_dim", proj_dim, True)
        pred_hidden = hidden if pred_hidden is None else check_positive("pred_hidden", pred_hidden, True)
        self.projector = mlp(3, dim, hidden, out, last_bn=True)
        self.predictor = mlp(2, out, pred_hidden, out, last_bn=False)
        self.key_features = copy.deepcopy(self.features).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def _probe_dim(self, net: nn.Module) -> int:
        side = max(32, int(net.size_multiple))
        was = self.features.training
        self.features.eval()
        with torch.no_grad():
            dim = int(self.features(torch.zeros(1, 1, side, side)).shape[1])
        self.features.train(was)
        return dim

    # -- training --------------------------------------------------------------------------

    def views(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views (blur probability 1.0 and 0.1, as in BYOL / MoCo v3)."""
        return make_view(batch, self.view_settings, 1.0), make_view(batch, self.view_settings, 0.1)

    def _contrast(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.float(), dim=1)
        keys, offset = _gather(k)
        logits = q @ keys.t() / self.temperature
        labels = torch.arange(q.shape[0], device=q.device) + offset
        return F.cross_entropy(logits, labels) * (2 * self.temperature)

    def forward(self, batch: torch.Tensor, phase: str = "main") -> dict[str, torch.Tensor]:
        v1, v2 = self.views(batch)
        q1 = self.predictor(self.projector(self.features(v1)))
        q2 = self.predictor(self.projector(self.features(v2)))
        with torch.no_grad():
            k1 = self.key_projector(self.key_features(v1))
            k2 = self.key_projector(self.key_features(v2))
        loss = self._contrast(q1, k2) + self._contrast(q2, k1)
        with torch.no_grad():
            agreement = (F.normalize(q1.float(), dim=1) * F.normalize(k2.float(), dim=1)).sum(dim=1).mean()
        return {"loss": loss, "pos_cos": agreement}

    def optimiser_settings(self) -> dict[str, dict[str, Any]]:
        return {"main": {"lr": self.lr, "betas": (0.9, 0.999), "weight_decay": self.weight_decay}}

    def optimiser_groups(self) -> dict[str, list[nn.Parameter]]:
        params = [*self.features.parameters(), *self.projector.parameters(), *self.predictor.parameters()]
        return {"main": [p for p in params if p.requires_grad]}

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        query = [*self.features.parameters(), *self.projector.parameters()]
        key = [*self.key_features.parameters(), *self.key_projector.parameters()]
        return key, query

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Momentum update ``key = m * key + (1 - m) * query`` (pure tensor ops, no host sync)."""
        self.momentum = momentum_at(step, total_steps, self.base_momentum)
        key, query = self._pairs()
        torch._foreach_mul_(key, self.momentum)
        torch._foreach_add_(key, query, alpha=1.0 - self.momentum)

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return prefixed_state(self.features.encoder, "encoder.")
