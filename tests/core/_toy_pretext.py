"""Tiny Pretext subclasses for the pretraining loop tests (no dependency on the real methods)."""

from __future__ import annotations

import torch
from torch import nn

from napari_emssl.models import create_model
from napari_emssl.pretext.base import Pretext

TINY_ARCH = "resunet_b2_rf44"
TINY_KWARGS = {"base_channels": 4}


class ToyDenoiser(Pretext):
    """One phase: reconstruct the clean patch from a noisy copy (a denoising autoencoder)."""

    method = "toy"

    def __init__(self, arch: str = TINY_ARCH, arch_kwargs: dict | None = None, noise: float = 0.2) -> None:
        super().__init__(arch, dict(TINY_KWARGS) if arch_kwargs is None else arch_kwargs)
        self.net = create_model(arch, in_channels=1, out_channels=1, **self.arch_kwargs)
        self.noise = noise

    def forward(self, batch: torch.Tensor, phase: str = "main") -> dict[str, torch.Tensor]:
        noisy = batch + self.noise * torch.randn_like(batch)
        loss = torch.mean((self.net(noisy) - batch) ** 2)
        return {"loss": loss, "mse": loss.detach()}

    def optimiser_settings(self):
        return {"main": {"lr": 3e-3, "betas": (0.9, 0.99), "weight_decay": 0.0}}

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return dict(self.net.state_dict())

    @torch.no_grad()
    def preview(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)


class ToyTwoPhase(Pretext):
    """Phases ("d", "g") like a GAN; records the order in which the loop calls it."""

    method = "toy2"
    phases = ("d", "g")

    def __init__(self, arch: str = TINY_ARCH, arch_kwargs: dict | None = None) -> None:
        super().__init__(arch, dict(TINY_KWARGS) if arch_kwargs is None else arch_kwargs)
        self.g = nn.Conv2d(1, 1, 3, padding=1)
        self.d = nn.Conv2d(1, 1, 3, padding=1)
        self.calls: list[tuple[str, int]] = []
        self.after: list[int] = []

    def forward(self, batch: torch.Tensor, phase: str = "main") -> dict[str, torch.Tensor]:
        self.calls.append((phase, len(self.after) + 1))
        if phase == "d":
            with torch.no_grad():
                fake = self.g(batch)
            loss = torch.mean(self.d(fake) ** 2) + torch.mean((self.d(batch) - 1) ** 2)
            return {"loss": loss}
        loss = torch.mean((self.g(batch) - batch) ** 2)
        return {"loss": loss, "l1": torch.mean(torch.abs(self.g(batch) - batch)).detach()}

    def optimiser_groups(self):
        return {"d": list(self.d.parameters()), "g": list(self.g.parameters())}

    def optimiser_settings(self):
        return {"d": {"lr": 1e-3, "betas": (0.5, 0.999)}, "g": {"lr": 2e-3, "betas": (0.5, 0.999)}}

    def after_step(self, step: int, total_steps: int) -> None:
        self.after.append(step)

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return {f"g.{k}": v for k, v in self.g.state_dict().items()}
