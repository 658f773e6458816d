"""On-device image corruptions with a random strength per sample (blur, Poisson and Gaussian noise).

Used as the pix2pix pretext's generator input (Kazimi et al. 2024: the clean EM image
corrupted with noise and blur is the input, the clean image the target) and by the MoCo v3
views. Everything is batched tensor arithmetic on the batch's device: no host round trips,
no per-sample Python loops. The random draws use the global torch generator of that device
(seed it for reproducible tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

__all__ = ["CorruptionSettings", "gaussian_blur", "corrupt", "uniform"]


def uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    """``n`` draws from U(low, high) in float32 on ``like``'s device."""
    return torch.rand(n, device=like.device, dtype=torch.float32) * (high - low) + low


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Blur every sample of ``x`` (B, 1, H, W) with its own Gaussian ``sigma`` (B,) in pixels.

    The kernel spans ``2 * ceil(3 * max_sigma) + 1`` pixels (reflect padding); ``sigma`` near
    0 gives an identity kernel. Separable: one grouped convolution per axis.
    """
    b, c, h, w = x.shape
    radius = max(1, int(math.ceil(3.0 * max_sigma)))
    radius = min(radius, h - 1, w - 1)  # reflect padding needs radius < size
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    s = sigma.to(torch.float32).clamp_min(1e-3).view(b, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K)
    kernel = kernel.repeat_interleave(c, dim=0).to(x.dtype)  # (B*C, K)
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, -1, 1), groups=b * c)
    return y.reshape(b, c, h, w)


@dataclass(frozen=True)
class CorruptionSettings:
    """Ranges of the random corruptions (images are about 0..1).

    Each corruption is applied to a sample with probability ``p_*``, at a strength drawn
    uniformly (blur sigma, Gaussian sigma) or log-uniformly (Poisson photons per unit
    intensity; fewer photons = more noise). With the defaults about 1 sample in 8 stays
    clean, and many get only weak corruption.
    """

    p_blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.3, 2.0)
    p_poisson: float = 0.5
    photons: tuple[float, float] = (5.0, 500.0)
    p_gaussian: float = 0.5
    noise_sigma: tuple[float, float] = (0.0, 0.2)


def corrupt(x: torch.Tensor, settings: CorruptionSettings = CorruptionSettings()) -> torch.Tensor:
    """Blur, then Poisson (shot) noise, then Gaussian (read) noise, each per sample at random.

    ``x`` is (B, 1, H, W) float; the result is float32, same shape, no gradient.
    """
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        b = x.shape[0]
        view = (b, 1, 1, 1)
        y = x
        if settings.p_blur > 0:
            sigma = uniform(b, *settings.blur_sigma, x)
            on = torch.rand(b, device=x.device) < settings.p_blur
            y = gaussian_blur(y, torch.where(on, sigma, torch.zeros_like(sigma)), settings.blur_sigma[1])
        if settings.p_poisson > 0:
            lo, hi = math.log(settings.photons[0]), math.log(settings.photons[1])
            scale = torch.exp(uniform(b, lo, hi, x)).view(view)
            shot = torch.poisson(y.clamp_min(0) * scale) / scale
            on = (torch.rand(b, device=x.device) < settings.p_poisson).view(view)
            y = torch.where(on, shot + (y - y.clamp_min(0)), y)  # negative parts kept as they were
        if settings.p_gaussian > 0:
            sigma = uniform(b, *settings.noise_sigma, x).view(view)
            on = (torch.rand(b, device=x.device) < settings.p_gaussian).view(view)
            y = y + torch.randn_like(y) * sigma * on
        return y
