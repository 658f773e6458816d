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

__all__ = ["bgremove_loss", "synthetic_sampler", "make_bgremove_loss_fn"]


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
