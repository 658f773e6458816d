"""pix2pix restoration pretext (Isola et al. 2017, as used for EM by Kazimi et al. 2024).

The generator (any CNN of the registry, one channel in and out) learns to map a randomly
corrupted image (blur, Poisson and Gaussian noise, per-sample random strengths, some
samples nearly clean) back to the clean image. A conditional PatchGAN discriminator sees
the corrupted input concatenated with either the clean target or the generator's output.

Losses (least-squares GAN, Mao et al. 2017, plus L1 as in pix2pix):

* phase ``"d"``: ``0.5 * (mean((D(x, y) - 1)^2) + mean(D(x, G(x))^2))`` with ``G(x)``
  made without gradient;
* phase ``"g"``: ``mean((D(x, G(x)) - 1)^2) + l1_weight * mean(|G(x) - y|)``, ``l1_weight``
  100 as in the paper.

Adam settings from pix2pix/Kazimi et al.: lr 2e-4, betas (0.5, 0.999), no weight decay.
The generator's whole ``state_dict`` is the pretrained state (a downstream network with
another number of classes skips only the head when loading by name and shape).

Note for a DistributedDataParallel loop: phase ``"d"`` does not use the generator's
parameters with gradient, so the wrapper needs ``find_unused_parameters=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ._common import build_network, check_positive
from .base import Pretext
from .corrupt import CorruptionSettings, corrupt

__all__ = ["PatchDiscriminator", "Pix2PixPretext"]


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN: 4x4 convolutions, stride 2 ``layers`` times then stride 1 twice.

    With ``layers=3`` each output value judges a 70 x 70 input patch. The first layer has no
    normalisation; the others use instance normalisation (pix2pix's choice for small
    batches; no running statistics, so real and fake batches do not mix). LeakyReLU 0.2.
    Inputs must be at least ``min_size = 2 ** (layers + 2)`` pixels on each side.
    """

    def __init__(self, in_channels: int = 2, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [
                nn.Conv2d(c, out, 4, stride, 1, bias=False),
                nn.InstanceNorm2d(out, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c = out
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)
        self.min_size = 2 ** (layers + 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Pix2PixPretext(Pretext):
    """Conditional GAN restoration pretext; phases ``("d", "g")``. See the module docstring."""

    method = "gan"
    phases = ("d", "g")

    def __init__(
        self,
        arch: str,
        arch_kwargs: dict[str, Any] | None = None,
        *,
        l1_weight: float = 100.0,
        disc_channels: int = 32,
        disc_layers: int = 3,
        lr: float = 2e-4,
        max_noise_sigma: float = 0.2,
        max_blur_sigma: float = 2.0,
        min_photons: float = 5.0,
    ) -> None:
        super().__init__(arch, arch_kwargs)
        if isinstance(l1_weight, bool) or not isinstance(l1_weight, (int, float)) or l1_weight < 0:
            raise InputError(f"l1_weight must be a number >= 0, got {l1_weight!r}")
        self.l1_weight = float(l1_weight)
        self.lr = check_positive("lr", lr)
        self.corruption = CorruptionSettings(
            blur_sigma=(min(0.3, max_blur_sigma), check_positive("max_blur_sigma", max_blur_sigma)),
            photons=(check_positive("min_photons", min_photons), max(500.0, 100 * min_photons)),
            noise_sigma=(0.0, check_positive("max_noise_sigma", max_noise_sigma)),
        )
        self.generator = build_network(arch, self.arch_kwargs, out_channels=1)
        self.discriminator = PatchDiscriminator(
            2, check_positive("disc_channels", disc_channels, True), check_positive("disc_layers", disc_layers, True)
        )

    def corrupt(self, batch: torch.Tensor) -> torch.Tensor:
        """The generator's input: ``batch`` blurred and noised per sample at random (no gradient)."""
        return corrupt(batch, self.corruption)

    def forward(self, batch: torch.Tensor, phase: str = "g") -> dict[str, torch.Tensor]:
        if min(batch.shape[-2:]) < self.discriminator.min_size:
            raise InputError(
                f"gan pretext: patches must be at least {self.discriminator.min_size} pixels on each side "
                f"for the PatchGAN discriminator, got {tuple(batch.shape[-2:])}"
            )
        clean = batch.float()
        noisy = self.corrupt(clean)
        if phase == "d":
            with torch.no_grad():
                fake = self.generator(noisy).float()
            real_score = self.discriminator(torch.cat([noisy, clean], dim=1)).float()
            fake_score = self.discriminator(torch.cat([noisy, fake], dim=1)).float()
            d_real = (real_score - 1).square().mean()
            d_fake = fake_score.square().mean()
            loss = 0.5 * (d_real + d_fake)
            return {"loss": loss, "d_real": d_real.detach(), "d_fake": d_fake.detach()}
        if phase == "g":
            fake = self.generator(noisy).float()
            score = self.discriminator(torch.cat([noisy, fake], dim=1)).float()
            adv = (score - 1).square().mean()
            l1 = (fake - clean).abs().mean()
            loss = adv + self.l1_weight * l1
            return {"loss": loss, "adv": adv.detach(), "l1": l1.detach()}
        raise ValueError(f"gan pretext has phases {self.phases}, got {phase!r}")

    def optimiser_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "d": [p for p in self.discriminator.parameters() if p.requires_grad],
            "g": [p for p in self.generator.parameters() if p.requires_grad],
        }

    def optimiser_settings(self) -> dict[str, dict[str, Any]]:
        settings = {"lr": self.lr, "betas": (0.5, 0.999), "weight_decay": 0.0}
        return {"d": dict(settings), "g": dict(settings)}

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.generator.state_dict().items()}

    @torch.no_grad()
    def preview(self, batch: torch.Tensor) -> torch.Tensor:
        """The generator's restoration of a freshly corrupted ``batch``."""
        return self.generator(self.corrupt(batch.float())).float()
