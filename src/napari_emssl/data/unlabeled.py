"""Unlabeled EM images for self-supervised pretraining: sources read lazily, random patches.

Sources (arrays, dask/zarr, TIFF stacks, pictures, folders, zarr; see :mod:`.plane_sources`)
are opened lazily, each normalised on its own; only the crops are read.

:class:`UnlabeledPatches` is a map-style dataset of ``samples_per_epoch`` items: item
``i`` of epoch ``e`` is a random crop drawn with ``numpy.random.default_rng((seed, e, i))``
(plane chosen with probability proportional to its area, position uniform, then a random
flip and 90-degree rotation), so runs are reproducible whatever the number of DataLoader
workers, and a ``DistributedSampler`` can shard it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .plane_sources import IMAGE_SUFFIXES, PlaneSource, open_sources

__all__ = ["PlaneSource", "UnlabeledPatches", "open_sources", "build_dataset", "IMAGE_SUFFIXES"]


# --------------------------------------------------------------------------------------------- dataset


class UnlabeledPatches(torch.utils.data.Dataset):
    """``samples_per_epoch`` random, flipped and rotated ``(1, patch, patch)`` float32 crops.

    Item ``i`` depends only on ``(seed, epoch, i)``; call :meth:`set_epoch` before each
    epoch (before creating the DataLoader iterator, so that workers see it).
    """

    def __init__(self, sources: Sequence[PlaneSource], patch: int, samples_per_epoch: int, *, seed: int = 0,
                 augment: bool = True, notes: Sequence[str] = ()) -> None:
        if not sources:
            raise InputError("no image sources to draw patches from")
        self.sources = list(sources)
        self.patch, self.samples_per_epoch, self.seed, self.augment = int(patch), int(samples_per_epoch), int(seed), augment
        self.notes = list(notes)
        self.epoch = 0
        weights = np.array([s.n_planes * s.area for s in self.sources], dtype=np.float64)
        self._cumulative = np.cumsum(weights / weights.sum())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def sample(self, index: int, epoch: int | None = None) -> np.ndarray:
        """The ``(1, patch, patch)`` crop of item ``index`` in ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng((self.seed, epoch, int(index)))
        k = min(int(np.searchsorted(self._cumulative, rng.random(), side="right")), len(self.sources) - 1)
        source = self.sources[k]
        plane = int(rng.integers(source.n_planes))
        h, w = source.shape_yx
        y, x = int(rng.integers(h - self.patch + 1)), int(rng.integers(w - self.patch + 1))
        crop = source.crop(plane, y, x, self.patch)
        if self.augment:
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            if rng.random() < 0.5:
                crop = crop[::-1, :]
            crop = np.rot90(crop, int(rng.integers(4)))
        return np.ascontiguousarray(crop, dtype=np.float32)[None]

    def __getitem__(self, index: int) -> torch.Tensor:
        """Item ``index`` of the current epoch; index ``e * len + i`` is item ``i`` of the epoch ``e`` later."""
        later, i = divmod(int(index), self.samples_per_epoch)
        return torch.from_numpy(self.sample(i, epoch=self.epoch + later))

    def info(self) -> dict[str, Any]:
        """Plain-data summary for RunStarted events and model.json lineage."""
        return {
            "sources": [s.describe() for s in self.sources],
            "images": int(sum(s.n_planes for s in self.sources)),
            "pixels": int(sum(s.n_planes * s.area for s in self.sources)),
            "patch": self.patch,
            "patches_per_epoch": self.samples_per_epoch,
            "notes": list(self.notes),
        }


def build_dataset(data: Sequence[Any] | Any, patch: int, samples_per_epoch: int = 1024, *, seed: int = 0,
                  augment: bool = True) -> UnlabeledPatches:
    """Open ``data`` (paths and/or arrays) and return the patch dataset over it."""
    sources, notes = open_sources(data, patch)
    return UnlabeledPatches(sources, patch, samples_per_epoch, seed=seed, augment=augment, notes=notes)
