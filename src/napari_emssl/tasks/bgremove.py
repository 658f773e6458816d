"""Noise and background removal: synthetic atomic-resolution pairs or a user-supplied clean target.

The TEMImageNet "noise and background removal" task (Lin et al. 2021; fine-tuned with an
L1 + L2 loss in Kazimi et al. 2024): the input is a noisy STEM image on a smooth
low-frequency background, the target the clean atom columns alone. A smooth background
cannot be told apart from signal without knowing what signal looks like, so there is no
self-supervised variant: training uses synthetic pairs from
:mod:`napari_emssl.data.synthetic` (suited to atomic-resolution images) or a paired
background-free target of the user's image (normalised with the input's map, see
:mod:`~napari_emssl.data.synthetic`: the target keeps the input's scale, without offset).
"""

from __future__ import annotations

import torch

from ..data.synthetic import SynthSettings, SyntheticPairSampler
from .restoration import LossFn, SampleFn, make_paired_loss_fn, restoration_loss

__all__ = ["bgremove_loss", "synthetic_sampler", "make_bgremove_loss_fn", "estimate_spacing", "adapted_settings"]


def bgremove_loss(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """L1 + L2 to the background-free clean target (``loss``, ``l1``, ``l2``)."""
    return restoration_loss(pred, target)


def synthetic_sampler(patch_size: int, *, seed: int = 0, settings: SynthSettings | None = None) -> SyntheticPairSampler:
    """Endless synthetic ``(noisy + background, clean columns)`` batches ``(B, 1, P, P)``."""
    return SyntheticPairSampler(patch_size, "bgremove", seed=seed, settings=settings)


def make_bgremove_loss_fn(
    batch_size: int,
    device: torch.device | str,
    *,
    sample: SampleFn | None = None,
    patch_size: int = 128,
    seed: int = 0,
    settings: SynthSettings | None = None,
) -> LossFn:
    """The trainer's ``loss_fn(net)``: L1 + L2 on ``sample(batch_size)`` pairs.

    Without ``sample`` the pairs are synthetic (:func:`synthetic_sampler` with
    ``patch_size`` and ``seed``); with a paired sampler (e.g.
    :class:`~napari_emssl.tasks.restoration.PairedPatchSampler` on the user's image and
    background-free target) those pairs are used.
    """
    if sample is None:
        sample = synthetic_sampler(patch_size, seed=seed, settings=settings).sample
    return make_paired_loss_fn(sample, batch_size, device)


def estimate_spacing(image, *, min_px: float = 4.0, max_px: float = 40.0) -> float | None:
    """The dominant period (pixels) of a normalised image ``(Y, X)`` from its power spectrum, or ``None``.

    The spectrum of a central square crop (Hann-windowed) is averaged over rings of equal
    spatial frequency; the strongest ring between the frequencies of ``max_px`` and
    ``min_px`` periods is the first lattice reflection when it stands out (at least 4 times
    the median of that band), which is the case for atom-column lattices and not for
    amorphous or aperiodic images.
    """
    import numpy as np

    plane = np.asarray(image, dtype=np.float64)
    side = min(plane.shape[-2:], default=0)
    side = min(side, 512)
    if side < 2 * max(min_px, 8):
        return None
    y0, x0 = (plane.shape[0] - side) // 2, (plane.shape[1] - side) // 2
    crop = plane[y0 : y0 + side, x0 : x0 + side]
    crop = crop - crop.mean()
    window = np.outer(np.hanning(side), np.hanning(side))
    power = np.abs(np.fft.fftshift(np.fft.fft2(crop * window))) ** 2
    yy, xx = np.indices(power.shape)
    radius = np.hypot(yy - side // 2, xx - side // 2).round().astype(int)
    rings = np.bincount(radius.ravel(), power.ravel()) / np.maximum(np.bincount(radius.ravel()), 1)
    lo, hi = int(np.ceil(side / max_px)), int(np.floor(side / min_px))
    hi = min(hi, side // 2)
    if hi - lo < 3:
        return None
    band = rings[lo : hi + 1]
    k = int(np.argmax(band))
    if band[k] < 4.0 * float(np.median(band)):
        return None
    return float(side / (lo + k))


def adapted_settings(image, settings: SynthSettings | None = None) -> tuple[SynthSettings, float | None]:
    """Synthetic-pair settings matched to a user image: lattice constants around its dominant period.

    Returns the settings and the period found (``None``: no lattice found, defaults kept).
    The first lattice reflection of a lattice with constant ``a`` appears at period ``a``
    (or ``a * sqrt(3) / 2`` for a hexagonal one), so constants from 0.8 to 1.4 times the
    period are drawn.
    """
    import dataclasses

    settings = settings or SynthSettings()
    plane = image if getattr(image, "ndim", 2) == 2 else image[len(image) // 2]
    period = estimate_spacing(plane)
    if period is None:
        return settings, None
    return dataclasses.replace(settings, spacing=(max(4.0, 0.8 * period), min(48.0, 1.4 * period))), period
