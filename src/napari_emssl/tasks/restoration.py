"""Shared pieces of the image-restoration tasks (denoise, background removal, super-resolution).

- :func:`restoration_loss`: L1 + L2 to a clean target, the restoration loss of Kazimi et
  al. 2024 (fine-tuning on TEMImageNet, Lin et al. 2021).
- :class:`PairedPatchSampler`: aligned random patches of an image and its float target
  (a clean image, a background-free image, or a high-resolution image ``factor`` times
  larger), for the "paired" mode of every restoration task.
- :func:`make_paired_loss_fn`: the trainer's ``loss_fn(net) -> dict`` for any
  ``sample(batch_size) -> (inputs, targets)`` source.

A *sample function* is anything with the call shape of
:meth:`napari_emssl.data.patches.PatchSampler.sample`: ``sample(batch_size)`` returns
``(inputs, targets)`` numpy arrays ``(B, C, H, W)`` float32 (``targets`` may be ``None``
for self-supervised tasks). The loop (:func:`napari_emssl.engine.trainer.train`) stays
outside: these functions only draw a batch and compute losses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.augment import augment_pair
from ..errors import InputError

__all__ = [
    "LossFn",
    "SampleFn",
    "restoration_loss",
    "to_tensor",
    "PairedPatchSampler",
    "make_paired_loss_fn",
]

LossFn = Callable[[torch.nn.Module], dict[str, torch.Tensor]]
SampleFn = Callable[[int], tuple[np.ndarray, np.ndarray | None]]


def restoration_loss(
    pred: torch.Tensor, target: torch.Tensor, *, l1_weight: float = 1.0, l2_weight: float = 1.0
) -> dict[str, torch.Tensor]:
    """``l1_weight * L1 + l2_weight * L2`` (means over all pixels), computed in float32.

    Returns ``loss`` (to optimise), ``l1`` and ``l2`` (the mean squared error).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    pred = pred.float()
    target = target.float()
    l1 = F.l1_loss(pred, target)
    l2 = F.mse_loss(pred, target)
    return {"loss": l1_weight * l1 + l2_weight * l2, "l1": l1, "l2": l2}


def to_tensor(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A numpy batch as a float32 tensor on ``device`` (non-blocking copy)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device, non_blocking=True)


class PairedPatchSampler:
    """Aligned random patches ``(B, 1, P, P)`` of ``image`` and ``(B, 1, fP, fP)`` of ``target``.

    ``image`` is ``(Y, X)`` or ``(Z, Y, X)`` (normalised float); ``target`` has the same
    shape times ``factor`` in Y and X (``factor=1``: denoise / background removal with a
    clean target; ``factor=2, 4``: super-resolution with a high-resolution target of the
    same field of view). Patches are drawn uniformly over slices and positions and
    augmented together with :func:`~napari_emssl.data.augment.augment_pair` (flips, 90°
    rotations, the same grey-value map on both; added noise goes to the input only when
    ``noise`` is true). The same ``seed`` gives the same batches.
    """

    def __init__(
        self,
        image: np.ndarray,
        target: np.ndarray,
        patch_size: int,
        *,
        factor: int = 1,
        seed: int = 0,
        augment: bool = True,
        noise: bool = True,
    ) -> None:
        image = np.asarray(image, dtype=np.float32)
        target = np.asarray(target, dtype=np.float32)
        if image.ndim not in (2, 3):
            raise InputError(f"The image has shape {image.shape}; expected a 2D image (Y, X) or a 3D stack (Z, Y, X).")
        factor = int(factor)
        expected = image.shape[:-2] + (image.shape[-2] * factor, image.shape[-1] * factor)
        if target.shape != expected:
            raise InputError(
                f"The target has shape {target.shape} but the image has shape {image.shape}; expected {expected} "
                f"(the image's shape{' times the factor ' + str(factor) + ' in Y and X' if factor > 1 else ''})."
            )
        self.patch_size = int(patch_size)
        if min(image.shape[-2:]) < self.patch_size:
            raise InputError(f"The image {image.shape[-2:]} is smaller than the patch size {self.patch_size}.")
        self.factor = factor
        self.augment = bool(augment)
        self.noise = bool(noise)
        self._image = image[None] if image.ndim == 2 else image
        self._target = target[None] if target.ndim == 2 else target
        self._rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """A batch: inputs ``(B, 1, P, P)`` and targets ``(B, 1, fP, fP)``, float32."""
        p, f, rng = self.patch_size, self.factor, self._rng
        nz, ny, nx = self._image.shape
        x = np.empty((batch_size, 1, p, p), np.float32)
        y = np.empty((batch_size, 1, p * f, p * f), np.float32)
        for b in range(batch_size):
            z = int(rng.integers(nz))
            y0, x0 = int(rng.integers(ny - p + 1)), int(rng.integers(nx - p + 1))
            img = self._image[z, y0 : y0 + p, x0 : x0 + p][None]
            tgt = self._target[z, y0 * f : (y0 + p) * f, x0 * f : (x0 + p) * f][None]
            if self.augment:
                img, tgt = augment_pair(img, tgt, rng, noise=self.noise)
            x[b], y[b] = img, tgt
        return x, y


def make_paired_loss_fn(
    sample: SampleFn,
    batch_size: int,
    device: torch.device | str,
    *,
    forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
    l1_weight: float = 1.0,
    l2_weight: float = 1.0,
) -> LossFn:
    """``loss_fn(net)``: draw ``sample(batch_size)``, run ``forward(net, inputs)`` (default ``net(inputs)``), L1 + L2.

    Used for paired denoising and background removal (a clean target, synthetic or the
    user's) and, with ``forward`` from :mod:`~napari_emssl.tasks.superres`, paired
    super-resolution.
    """
    run = forward or (lambda net, x: net(x))

    def loss_fn(net: torch.nn.Module) -> dict[str, torch.Tensor]:
        x, y = sample(batch_size)
        if y is None:
            raise InputError("paired training needs targets, but the sampler returned none")
        x, y = to_tensor(x, device), to_tensor(y, device)
        return restoration_loss(run(net, x), y, l1_weight=l1_weight, l2_weight=l2_weight)

    return loss_fn
