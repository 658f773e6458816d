"""Random augmented views for contrastive learning, made on the batch's device.

Greyscale versions of the BYOL / MoCo v3 augmentations (Grill et al. 2020; Chen, Xie, He
2021): random resized crop (scale 0.2..1, aspect 3/4..4/3) resampled back to the input
size with ``grid_sample``, horizontal and vertical flips, Gaussian blur (probability 1.0 for
the first view and 0.1 for the second, as in the papers' asymmetric recipe), gamma,
brightness and contrast jitter, and additive Gaussian noise. No colour operations (EM is
greyscale). Per-sample random parameters, no host synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .corrupt import gaussian_blur, uniform

__all__ = ["ViewSettings", "random_resized_crop", "intensity_jitter", "make_view"]


@dataclass(frozen=True)
class ViewSettings:
    """Ranges of the view augmentations (images about 0..1)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    gamma: tuple[float, float] = (0.7, 1.4)
    brightness: float = 0.2
    contrast: tuple[float, float] = (0.6, 1.4)
    p_noise: float = 0.5
    noise_sigma: tuple[float, float] = (0.0, 0.08)

    def scaled(self, jitter: float) -> "ViewSettings":
        """The photometric ranges (gamma, brightness, contrast, noise) scaled by ``jitter`` (0 = none)."""
        def around_one(pair: tuple[float, float]) -> tuple[float, float]:
            return (1 + (pair[0] - 1) * jitter, 1 + (pair[1] - 1) * jitter)

        return ViewSettings(
            crop_scale=self.crop_scale, crop_ratio=self.crop_ratio, blur_sigma=self.blur_sigma,
            gamma=around_one(self.gamma), brightness=self.brightness * jitter, contrast=around_one(self.contrast),
            p_noise=self.p_noise, noise_sigma=(self.noise_sigma[0] * jitter, self.noise_sigma[1] * jitter),
        )


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float]) -> torch.Tensor:
    """A random crop of area fraction ``scale`` and aspect ``ratio`` per sample, flipped at random,
    resampled (bilinear) to the input size."""
    b = x.shape[0]
    area = uniform(b, *scale, x)
    log_ratio = uniform(b, math.log(ratio[0]), math.log(ratio[1]), x)
    aspect = log_ratio.exp()
    half_w = (area * aspect).sqrt().clamp(max=1.0)  # fractions of the width / height
    half_h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, device=x.device) * 2 - 1) * (1 - half_w)
    cy = (torch.rand(b, device=x.device) * 2 - 1) * (1 - half_h)
    flip_x = torch.where(torch.rand(b, device=x.device) < 0.5, -1.0, 1.0)
    flip_y = torch.where(torch.rand(b, device=x.device) < 0.5, -1.0, 1.0)
    zero = torch.zeros_like(cx)
    theta = torch.stack(
        [torch.stack([half_w * flip_x, zero, cx], dim=1), torch.stack([zero, half_h * flip_y, cy], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def intensity_jitter(x: torch.Tensor, settings: ViewSettings) -> torch.Tensor:
    """Gamma (on the non-negative part), then contrast around the sample mean, then brightness."""
    b = x.shape[0]
    view = (b, 1, 1, 1)
    gamma = uniform(b, math.log(settings.gamma[0]), math.log(settings.gamma[1]), x).exp().view(view)
    x = x.clamp_min(0).pow(gamma) + (x - x.clamp_min(0))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(b, *settings.contrast, x).view(view)
    brightness = uniform(b, -settings.brightness, settings.brightness, x).view(view)
    return (x - mean) * contrast + mean + brightness


def make_view(x: torch.Tensor, settings: ViewSettings, p_blur: float) -> torch.Tensor:
    """One augmented view of ``x`` (B, 1, H, W) as float32, without gradient."""
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        b = x.shape[0]
        y = random_resized_crop(x, settings.crop_scale, settings.crop_ratio)
        sigma = uniform(b, *settings.blur_sigma, x)
        on = torch.rand(b, device=x.device) < p_blur
        y = gaussian_blur(y, torch.where(on, sigma, torch.zeros_like(sigma)), settings.blur_sigma[1])
        y = intensity_jitter(y, settings)
        noise = uniform(b, *settings.noise_sigma, x) * (torch.rand(b, device=x.device) < settings.p_noise)
        return y + torch.randn_like(y) * noise.view(b, 1, 1, 1)
