"""Configuration of fine-tuning and prediction runs.

Plain frozen dataclasses validated on construction, so a bad value fails before any
work starts, with a message that names the field. ``to_dict``/``from_dict`` round-trip
through JSON (stored in ``model.json``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

SCHEMA_VERSION = 1
TASKS = ("segment", "denoise", "bgremove", "superres")
DEVICES = ("auto", "cpu", "cuda", "mps")
RESTORATION_TASKS = ("denoise", "bgremove", "superres")
FACTORS = (2, 4)
#: what a blind-spot pixel shows the network in self-supervised denoising (see ``tasks/denoise.py``)
MASK_REPLACEMENTS = ("mean", "neighbour")
#: the training loss of self-supervised denoising (see ``tasks/denoise.py``): blind spot plus the re-visible term, or the
#: blind-spot loss alone
DENOISE_LOSSES = ("re-visible", "blind-spot")
#: self-supervised denoising: sigma (px) of the low-pass of the residual added back after prediction (see ``tasks/denoise_corrections.py``)
MEAN_CORRECTION = 16.0
#: self-supervised denoising: the leak-correction share chosen per slice after prediction (see ``tasks/denoise_corrections.py``)
LEAK_AUTO = "auto"
#: the largest share LEAK_AUTO chooses (at 1 the output is the neighbours-only estimate, which loses on average)
LEAK_AUTO_MAX = 0.75
LEAK_CORRECTION = LEAK_AUTO
#: self-supervised super-resolution: steps of iterative back-projection after prediction (see ``tasks/superres.py``)
BACK_PROJECTION = 5
#: test-time augmentation is on by default for inputs of at most this many pixels (one 4096 x 4096 image)
TTA_AUTO_MAX_PIXELS = 4096 * 4096
#: views a restoration averages when ``tta`` is None and the input is a stack or bigger than TTA_AUTO_MAX_PIXELS:
#: the slice and its left-right mirror (cancels the period-2 pattern one view keeps; docs/benchmarks.md)
AUTO_VIEWS_LARGE = 2
#: tile side (px) for prediction when ``PredictConfig.tile`` is None: bigger tiles on CUDA, where fewer, larger
#: batches keep the GPU busier (docs/benchmarks.md, prediction throughput on an H200: 512 px gave 1.6x the
#: end-to-end speed of 256 px for segmentation), 256 px on the CPU and MPS
AUTO_TILE = {"cuda": 512}
DEFAULT_TILE = 256


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive whole number, got {value!r}")


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise InputError(f"{name} must be a number, got {value!r}")


def _leak_share(value: Any, upper: str) -> None:
    """A leak-correction share: "auto" or a number from 0 (off) to 1; ``upper`` words the top of the range in the message."""
    if value == LEAK_AUTO:
        return
    if isinstance(value, str):
        raise InputError(f"leak_correction must be a number or {LEAK_AUTO!r}, got {value!r}")
    _number("leak_correction", value)
    if not 0.0 <= value <= 1.0:
        raise InputError(f"leak_correction must be a share between 0 (off) and {upper}, got {value}")


def _check_device(device: str) -> None:
    if not isinstance(device, str):
        raise InputError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise InputError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune a network on an image and its (sparse) labels.

    The defaults were chosen by measurement on the ssTEM benchmark (docs/benchmarks.md):
    they give a useful segmentation in a few minutes on a 2-core CPU.
    """

    task: str = "segment"
    arch: str | None = None  # None: the default architecture of the task
    arch_kwargs: dict = field(default_factory=dict)
    init: str = "bundled"  # "bundled" | "random" | path to a model directory
    steps: int | None = None  # optimiser steps; if both are None, the default steps are used
    epochs: int | None = None  # one epoch = as many patches as cover the painted slices once
    batch_size: int = 8
    patch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA only
    seed: int = 0
    preview_every_s: float = 10.0  # 0 disables live previews
    tile: int = 256
    factor: int = 2  # super-resolution only: 2 or 4
    mask_fraction: float = 0.0625  # self-supervised denoising: share of pixels masked (blind spots) per patch
    # self-supervised denoising: a masked pixel shows the mean of its 8 neighbours ("mean") or one of them ("neighbour")
    mask_replace: str = "mean"
    # self-supervised denoising: "re-visible" (blind spot + the re-visible term: the network learns how much of a
    # pixel's own value to use) or "blind-spot" (the blind-spot loss alone, the default before 0.1.0)
    denoise_loss: str = "re-visible"
    # self-supervised denoising: the restored image gets back the Gaussian low-pass (sigma in px) of what it removed,
    # so it keeps the input's local mean (the noise has zero mean); recorded in the model, applied by every prediction.
    # 0: off (the behaviour before 0.1.0)
    mean_correction: float = MEAN_CORRECTION
    # self-supervised denoising: the share (0..1) of the weight the network gives each pixel's own value (its own noise)
    # taken out after prediction, measured with one more network pass; recorded in the model. 0: off; "auto" (the
    # default): chosen per slice by Stein's unbiased risk estimate, between 0 and LEAK_AUTO_MAX
    leak_correction: float | str = LEAK_CORRECTION
    # self-supervised super-resolution: steps of iterative back-projection after prediction, which make the result's
    # factor x factor block means the input's (the degradation the training pairs assume); recorded in the model. 0: off
    back_projection: int = BACK_PROJECTION
    # self-supervised super-resolution: learn from synthetic atom-column lattices matched to the image's lattice period
    # (tasks/superres_lattice.py) instead of the image downscaled once more; for atomic-resolution images
    lattice_pairs: bool = False
    schema_version: int = SCHEMA_VERSION

    DEFAULT_STEPS = 600
    # bgremove starts from weights already trained on synthetic pairs: a short adaptation; blind-spot
    # denoising learns from 1/16 of the pixels per step and gains 0.2-0.5 dB from 600 to 1200 steps
    # on three of the four benchmark images (docs/benchmarks.md)
    DEFAULT_STEPS_BY_TASK = {"segment": 600, "denoise": 1200, "bgremove": 200, "superres": 600}

    @property
    def default_steps(self) -> int:
        return self.DEFAULT_STEPS_BY_TASK.get(self.task, self.DEFAULT_STEPS)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.steps is not None and self.epochs is not None:
            raise InputError("give either steps or epochs, not both")
        _positive_int("steps", self.steps, allow_none=True)
        _positive_int("epochs", self.epochs, allow_none=True)
        _positive_int("batch_size", self.batch_size)
        _positive_int("patch_size", self.patch_size)
        _positive_int("tile", self.tile)
        if isinstance(self.factor, bool) or self.factor not in FACTORS:
            raise InputError(f"factor (super-resolution) must be one of {', '.join(map(str, FACTORS))}, got {self.factor!r}")
        _number("mask_fraction", self.mask_fraction)
        if not 0.0 < self.mask_fraction <= 0.25:
            raise InputError(f"mask_fraction must be in (0, 0.25], got {self.mask_fraction}")
        if self.mask_replace not in MASK_REPLACEMENTS:
            raise InputError(f"mask_replace must be one of {', '.join(MASK_REPLACEMENTS)}, got {self.mask_replace!r}")
        if self.denoise_loss not in DENOISE_LOSSES:
            raise InputError(f"denoise_loss must be one of {', '.join(DENOISE_LOSSES)}, got {self.denoise_loss!r}")
        _number("mean_correction", self.mean_correction)
        if not 0.0 <= self.mean_correction <= 1024.0:
            raise InputError(f"mean_correction must be a low-pass sigma in pixels between 0 (off) and 1024, got {self.mean_correction}")
        _leak_share(self.leak_correction, "1 (all of the pixel's own weight)")
        if isinstance(self.back_projection, bool) or not isinstance(self.back_projection, int) or not 0 <= self.back_projection <= 100:
            raise InputError(f"back_projection must be a whole number of steps from 0 (off) to 100, got {self.back_projection!r}")
        if not isinstance(self.lattice_pairs, bool):
            raise InputError(f"lattice_pairs must be true or false, got {self.lattice_pairs!r}")
        if self.lattice_pairs and self.task != "superres":
            raise InputError(f"lattice pairs are for super-resolution (task 'superres'), not {self.task!r}")
        if self.patch_size < 16:
            raise InputError(f"patch_size must be at least 16 pixels, got {self.patch_size}")
        for name in ("lr", "weight_decay", "dice_weight", "preview_every_s"):
            _number(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be a whole number >= 0, got {self.seed!r}")
        if self.arch is not None and not isinstance(self.arch, str):
            raise InputError(f"arch must be an architecture name (see `emssl models`), got {self.arch!r}")
        if isinstance(self.init, os.PathLike):
            object.__setattr__(self, "init", os.fspath(self.init))  # a model directory given as a Path
        if not isinstance(self.init, str) or not self.init:
            raise InputError(f"init must be 'bundled', 'random' or a model directory, got {self.init!r}")
        if not (0 < self.lr < 1):
            raise InputError(f"lr must be between 0 and 1, got {self.lr}")
        if self.weight_decay < 0 or self.dice_weight < 0 or self.preview_every_s < 0:
            raise InputError("weight_decay, dice_weight and preview_every_s cannot be negative")
        if not isinstance(self.arch_kwargs, dict):
            raise InputError("arch_kwargs must be a dictionary")
        _check_device(self.device)
        if self.schema_version != SCHEMA_VERSION:
            raise InputError(f"unknown configuration schema version {self.schema_version} (this version reads {SCHEMA_VERSION})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown fine-tuning setting(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> FinetuneConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PredictConfig:
    """How to apply a trained model to images."""

    device: str = "auto"
    tile: int | None = None  # None: 512 px on CUDA, 256 elsewhere (tile_on)
    overlap: int | None = None  # None: at least half the receptive field, rounded up
    batch_size: int = 4
    amp: bool = True
    probabilities: bool = False  # also return per-class probabilities (segmentation)
    keep_dtype: bool = False  # restoration: return the input's dtype (rounded, clipped to its range) instead of float32
    # restoration: average the 8 flips/rotations of each slice (8x the prediction time); False: one view; None: the
    # 8 views for a single 2D image of at most TTA_AUTO_MAX_PIXELS pixels (4096 x 4096), the slice and its mirror
    # (2 views) for bigger images and for stacks
    tta: bool | None = None
    # segmentation of stacks: average each slice's class probabilities with its two z neighbours, each weighted
    # z_average relative to the slice (0: off; 0.25 = weights 1:4:1). Only for slices of one volume, in order.
    z_average: float = 0.0
    # self-supervised denoising: the leak-correction share to use instead of the one the model records (None: the
    # model's; 0: off; "auto": chosen per slice). Paired denoisers are never corrected.
    leak_correction: float | str | None = None
    auto_batch: bool = True  # CUDA: tiles per batch from the free GPU memory (batch_size elsewhere); halved on out-of-memory
    compile: bool = False  # CUDA: torch.compile the network (pays off on big stacks)

    def __post_init__(self) -> None:
        _check_device(self.device)
        _positive_int("tile", self.tile, allow_none=True)
        _positive_int("batch_size", self.batch_size)
        if self.overlap is not None and (not isinstance(self.overlap, int) or self.overlap < 0):
            raise InputError(f"overlap must be a non-negative whole number, got {self.overlap!r}")
        _number("z_average", self.z_average)
        if not 0.0 <= self.z_average <= 1.0:
            raise InputError(f"z_average must be between 0 (off) and 1 (plain mean of three slices), got {self.z_average}")
        if self.leak_correction is not None:
            _leak_share(self.leak_correction, "1, or None (the model's)")
        if self.tta is not None and not isinstance(self.tta, bool):
            raise InputError(f"tta must be True, False or None (automatic), got {self.tta!r}")

    def uses_tta(self, shape: tuple[int, ...]) -> bool:
        """Whether restoring an input of ``shape`` averages the 8 flips/rotations (resolves ``tta=None``)."""
        if self.tta is not None:
            return self.tta
        return len(shape) == 2 and math.prod(int(n) for n in shape) <= TTA_AUTO_MAX_PIXELS

    def tile_on(self, device_type: str, preferred: int | None = None) -> int:
        """The tile side on a device of this type (``cuda``, ``cpu``, ``mps``): ``tile``; else the network's
        ``preferred`` tile (a ViT: the image size its position embedding was trained for); else the device's default."""
        if self.tile is not None:
            return int(self.tile)
        return int(preferred) if preferred else AUTO_TILE.get(device_type, DEFAULT_TILE)

    def view_count(self, shape: tuple[int, ...]) -> int:
        """How many views restoring an input of ``shape`` averages: 8, 2 (the slice and its mirror) or 1."""
        if self.uses_tta(shape):
            return 8
        return 1 if self.tta is False else AUTO_VIEWS_LARGE

    def replace(self, **changes: Any) -> PredictConfig:
        return dataclasses.replace(self, **changes)
