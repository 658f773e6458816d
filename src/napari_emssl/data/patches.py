"""Random training patches that favour painted pixels and balance classes."""

from __future__ import annotations

import numpy as np

from . import IGNORE_INDEX
from .augment import augment_pair
from ..errors import InputError

__all__ = ["PatchSampler"]

_MAX_COORDS_PER_CLASS = 2_000_000  # keep a uniform random subset beyond this (memory)


def _pad_to(array: np.ndarray, size: int, *, value=None) -> np.ndarray:
    """Pad the last two axes at the end up to ``size`` (reflect, or constant ``value``)."""
    pad_y, pad_x = max(0, size - array.shape[-2]), max(0, size - array.shape[-1])
    if not (pad_y or pad_x):
        return array
    widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_y), (0, pad_x)]
    if value is None:
        return np.pad(array, widths, mode="reflect")
    return np.pad(array, widths, mode="constant", constant_values=value)


class PatchSampler:
    """Draw ``(B, 1, P, P)`` image patches and ``(B, P, P)`` targets from one image or stack.

    With probability ``painted_fraction`` a patch is centred (jitter up to P/4) on a painted
    pixel, chosen by first picking a painted class uniformly and then a pixel of that class
    uniformly, so rare classes are seen as often as common ones. Otherwise the patch is at a
    uniformly random position of a painted slice. Slices of a stack without paint are never
    used. Images smaller than the patch are reflect-padded (targets with ``IGNORE_INDEX``).
    Patches are augmented with :func:`~napari_emssl.data.augment.augment_pair`. The same
    ``seed`` gives the same sequence of batches.

    ``targets=None`` samples uniformly over all slices for self-supervised training; then
    :meth:`sample` returns ``(images, None)``. ``intensity=False`` / ``noise=False`` switch
    off the grey-value changes / the added noise (self-supervised denoising needs the
    image's own noise untouched: a grey-value map would make it biased).
    """

    def __init__(
        self,
        image: np.ndarray,
        targets: np.ndarray | None,
        patch_size: int,
        *,
        seed: int = 0,
        painted_fraction: float = 0.9,
        augment: bool = True,
        intensity: bool = True,
        noise: bool = True,
    ) -> None:
        image = np.asarray(image)
        if image.ndim not in (2, 3) or image.size == 0:
            raise InputError(f"The image has shape {image.shape}; expected a 2D image (Y, X) or a 3D stack (Z, Y, X).")
        if int(patch_size) < 1:
            raise InputError(f"Patch size {patch_size} is too small; expected at least 1 pixel.")
        if not 0.0 <= painted_fraction <= 1.0:
            raise InputError(f"painted_fraction {painted_fraction} is outside 0..1; expected a fraction.")
        self.patch_size = int(patch_size)
        self.painted_fraction = float(painted_fraction)
        self.augment = bool(augment)
        self.intensity = bool(intensity)
        self.noise = bool(noise)
        self._rng = np.random.default_rng(seed)

        vol = image[None] if image.ndim == 2 else image
        self._image = np.ascontiguousarray(_pad_to(vol, self.patch_size), dtype=np.float32)

        if targets is None:
            self._targets = None
            self.slices = list(range(self._image.shape[0]))
            self.classes: list[int] = []
            self._coords: list[np.ndarray] = []
            return

        targets = np.asarray(targets)
        if targets.shape != image.shape:
            raise InputError(
                f"The targets have shape {targets.shape} but the image has shape {image.shape}; expected the same shape."
            )
        tvol = targets[None] if targets.ndim == 2 else targets
        self._targets = np.ascontiguousarray(_pad_to(tvol.astype(np.int64, copy=False), self.patch_size, value=IGNORE_INDEX))

        flat = self._targets.reshape(-1)
        painted = np.flatnonzero(flat != IGNORE_INDEX)
        if painted.size == 0:
            raise InputError(
                "Nothing is painted in the labels; paint at least two classes: 1 = background and 2 = the structure to segment."
            )
        values = flat[painted]
        self.classes = [int(c) for c in np.unique(values)]
        self._coords = []
        for c in self.classes:
            idx = painted[values == c]
            if idx.size > _MAX_COORDS_PER_CLASS:
                idx = np.sort(self._rng.choice(idx, _MAX_COORDS_PER_CLASS, replace=False))
            self._coords.append(idx)
        plane = self._targets.shape[1] * self._targets.shape[2]
        self.slices = [int(z) for z in np.unique(painted // plane)]

    # ------------------------------------------------------------------ sampling

    def _corner(self) -> tuple[int, int, int]:
        rng, p = self._rng, self.patch_size
        _, ny, nx = self._image.shape
        if self._coords and rng.random() < self.painted_fraction:
            idx = self._coords[int(rng.integers(len(self._coords)))]
            flat = int(idx[int(rng.integers(idx.size))])
            z, rem = divmod(flat, ny * nx)
            cy, cx = divmod(rem, nx)
            j = p // 4
            cy += int(rng.integers(-j, j + 1))
            cx += int(rng.integers(-j, j + 1))
            y0 = min(max(cy - p // 2, 0), ny - p)
            x0 = min(max(cx - p // 2, 0), nx - p)
        else:
            z = self.slices[int(rng.integers(len(self.slices)))]
            y0 = int(rng.integers(ny - p + 1))
            x0 = int(rng.integers(nx - p + 1))
        return z, y0, x0

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        """A batch: images ``(B, 1, P, P)`` float32 and targets ``(B, P, P)`` int64 (or ``None``)."""
        p = self.patch_size
        images = np.empty((batch_size, 1, p, p), dtype=np.float32)
        targets = None if self._targets is None else np.empty((batch_size, p, p), dtype=np.int64)
        for b in range(batch_size):
            z, y0, x0 = self._corner()
            img = self._image[z, y0 : y0 + p, x0 : x0 + p][None]
            if self._targets is None:
                tgt = np.zeros((p, p), dtype=np.int64)
            else:
                tgt = self._targets[z, y0 : y0 + p, x0 : x0 + p]
            if self.augment:
                img, tgt = augment_pair(img, tgt, self._rng, intensity=self.intensity, noise=self.noise)
            images[b] = img
            if targets is not None:
                targets[b] = tgt
        return images, targets
