"""Super-resolution pairs for atomic-resolution images: synthetic atom-column lattices matched to the image.

The self-supervised pairs of :mod:`~napari_emssl.tasks.superres` downscale the user's image
once more and assume that it looks alike one scale up. An atomic lattice does not: its
columns keep their size in the specimen, so one scale down they are about a pixel wide, and
a network trained on them loses against bicubic upsampling on such images (docs/benchmarks.md,
"Synthetic lattice pairs"). With ``FinetuneConfig.lattice_pairs`` the pairs are instead clean
atom-column scenes (:mod:`napari_emssl.data.synthetic`: lattices, grain boundaries, amorphous
regions and backgrounds, as for background removal; TEMImageNet, Lin et al. 2021) drawn at the
scale the network is applied at: lattice constants of 0.8 to 1.4 times the image's own lattice
period (:func:`~napari_emssl.tasks.bgremove.estimate_spacing`) times the factor. Each scene is
area-downscaled by the factor as the input, the scene itself is the target, and the pair is
normalised as a user image is (the input's percentile map, applied to both).

The choice is the user's: the period detector also reports a period on many images that hold
no lattice, so it cannot tell an atomic-resolution image from another by itself.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..data.degrade import downscale_area
from ..data.normalize import percentile_normalize
from ..data.synthetic import SynthSettings, make_sample
from ..errors import InputError
from .bgremove import estimate_spacing
from .restoration import LossFn, to_tensor
from .superres import superres_loss

__all__ = ["SPACING_RANGE", "find_period", "lattice_settings", "lattice_pairs", "make_lattice_loss_fn"]

SPACING_RANGE = (0.8, 1.4)  # lattice constants drawn, in units of the image's period times the factor


def find_period(image: np.ndarray) -> float:
    """The lattice period (px) of ``image`` (``(Y, X)``, or its middle plane of ``(Z, Y, X)``); :class:`InputError` if none."""
    image = np.asarray(image)
    plane = image if image.ndim == 2 else image[image.shape[0] // 2]
    period = estimate_spacing(plane)
    if period is None:
        raise InputError("No atomic lattice was found in the image (no lattice reflection stands out in its power "
                         "spectrum): synthetic lattice pairs need an atomic-resolution image. Train without them.")
    return float(period)


def lattice_settings(image: np.ndarray, factor: int, patch: int) -> tuple[SynthSettings, float]:
    """Synthetic-scene settings for super-resolving ``image`` (normalised, ``(Y, X)`` or ``(Z, Y, X)``) by ``factor``.

    Returns the settings and the lattice period found in the (middle) plane, in its pixels.
    The constants are capped at half the training patch, so each patch holds two cells or
    more. No period: :class:`InputError` (the image shows no lattice reflection).
    """
    period = find_period(image)
    high = min(SPACING_RANGE[1] * factor * period, patch / 2)
    low = min(SPACING_RANGE[0] * factor * period, high)
    return dataclasses.replace(SynthSettings(), spacing=(low, high)), period


def lattice_pairs(rng: np.random.Generator, settings: SynthSettings, count: int, size: int,
                  factor: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` clean scenes of ``size`` px as ``(low, high)``: ``(B, 1, size / f, size / f)`` and ``(B, 1, size, size)``.

    ``low`` is the scene area-downscaled by ``factor``, percentile-normalised as a user image
    is; ``high`` the scene on the same intensity map.
    """
    lows, highs = [], []
    for _ in range(count):
        clean = make_sample(rng, size, settings=settings).clean
        low, stats = percentile_normalize(downscale_area(clean, factor))
        lows.append(low)
        highs.append((clean - np.float32(stats.p_low)) / np.float32(stats.p_high - stats.p_low))
    return np.stack(lows)[:, None].astype(np.float32), np.stack(highs)[:, None].astype(np.float32)


def make_lattice_loss_fn(settings: SynthSettings, batch_size: int, device: torch.device | str, factor: int,
                         patch: int, *, seed: int = 0) -> LossFn:
    """The trainer's ``loss_fn(net)``: :func:`~napari_emssl.tasks.superres.superres_loss` on :func:`lattice_pairs` of ``patch`` px."""
    if patch % factor:
        raise InputError(f"the training patch ({patch} px) must be a multiple of the factor {factor}")
    rng = np.random.default_rng(seed)

    def loss_fn(net: torch.nn.Module) -> dict[str, torch.Tensor]:
        low, high = lattice_pairs(rng, settings, batch_size, patch, factor)
        return superres_loss(net, to_tensor(low, device), to_tensor(high, device), factor)

    return loss_fn
