"""Configuration of self-supervised pretraining runs.

A frozen dataclass validated on construction, like :class:`~napari_emssl.config.FinetuneConfig`:
a bad value fails before any work starts, with a one-line message that names the field.

Run length: give ``steps`` (optimiser steps) or ``epochs``. An *epoch* here is
``samples_per_epoch`` random patches (default 1024) drawn from all the images together,
since random crops of a few large images have no natural epoch. With ``W`` processes
(``torchrun``) each step consumes ``batch_size`` patches per process, so the global batch
is ``batch_size x W`` and an epoch is ``ceil(samples_per_epoch / (batch_size x W))`` steps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .finetune import _check_device, _number, _positive_int

SCHEMA_VERSION = 1
#: the self-supervised methods (kept in step with ``napari_emssl.pretext.PRETEXT_METHODS``)
METHODS = ("gan", "mae", "mocov3", "mff")


@dataclass(frozen=True)
class PretrainConfig:
    """How to pretrain a network self-supervised on unlabeled EM images.

    ``lr`` None keeps each phase's published default (``Pretext.optimiser_settings``); a
    number replaces the peak learning rate of every phase. ``amp`` (bf16 autocast),
    ``channels_last`` and ``compile`` (``torch.compile``) take effect on CUDA only.
    Checkpoints are written every ``checkpoint_every_s`` seconds, at the end and on stop.
    """

    method: str
    arch: str | None = None  # None: the method's default architecture
    arch_kwargs: dict = field(default_factory=dict)
    method_options: dict = field(default_factory=dict)  # passed to create_pretext
    steps: int | None = None  # if both steps and epochs are None: DEFAULT_STEPS
    epochs: int | None = None  # one epoch = samples_per_epoch random patches
    samples_per_epoch: int = 1024
    batch_size: int = 16  # per process; global batch = batch_size x world size
    patch: int = 128  # square crop side, a multiple of 16
    lr: float | None = None
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    preview_every_s: float = 10.0  # 0 disables live previews
    checkpoint_every_s: float = 300.0  # 0: only at the end and on stop
    num_workers: int = 0  # DataLoader worker processes
    log_every: int = 10  # losses are read back from the device (a sync) only every log_every steps
    schema_version: int = SCHEMA_VERSION

    DEFAULT_STEPS = 2000

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.steps is not None and self.epochs is not None:
            raise InputError("give either steps or epochs, not both")
        _positive_int("steps", self.steps, allow_none=True)
        _positive_int("epochs", self.epochs, allow_none=True)
        for name in ("samples_per_epoch", "batch_size", "patch", "log_every"):
            _positive_int(name, getattr(self, name))
        if self.patch % 16:
            raise InputError(f"patch must be a multiple of 16 pixels (e.g. 64, 128, 256), got {self.patch}")
        if self.lr is not None:
            _number("lr", self.lr)
            if not (0 < self.lr < 1):
                raise InputError(f"lr must be between 0 and 1, got {self.lr}")
        for name in ("preview_every_s", "checkpoint_every_s"):
            _number(name, getattr(self, name))
            if getattr(self, name) < 0:
                raise InputError(f"{name} cannot be negative, got {getattr(self, name)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be a whole number >= 0, got {self.seed!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise InputError(f"num_workers must be a whole number >= 0, got {self.num_workers!r}")
        if self.arch is not None and (not isinstance(self.arch, str) or not self.arch):
            raise InputError(f"arch must be an architecture name (see `emssl models`), got {self.arch!r}")
        for name in ("arch_kwargs", "method_options"):
            if not isinstance(getattr(self, name), dict):
                raise InputError(f"{name} must be a dictionary, got {getattr(self, name)!r}")
        for name in ("amp", "channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _check_device(self.device)
        if self.schema_version != SCHEMA_VERSION:
            raise InputError(f"unknown configuration schema version {self.schema_version} (this version reads {SCHEMA_VERSION})")

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Optimiser steps in one epoch of ``samples_per_epoch`` patches (at least 1)."""
        return max(1, math.ceil(self.samples_per_epoch / (self.batch_size * max(1, world_size))))

    def total_steps(self, world_size: int = 1) -> int:
        """The run length in optimiser steps."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return self.epochs * self.steps_per_epoch(world_size)
        return self.DEFAULT_STEPS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown pretraining setting(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> PretrainConfig:
        return dataclasses.replace(self, **changes)
