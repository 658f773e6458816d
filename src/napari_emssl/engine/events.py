"""Typed events yielded by every long run (``api.iter_*``).

Events are frozen dataclasses holding plain data only (numbers, strings, numpy arrays),
so they can cross from a worker thread to the GUI thread safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RunStarted:
    kind: str  # "finetune" | "predict" | "pretrain"
    total_steps: int
    device: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepEnd:
    step: int  # 1-based count of finished optimiser steps
    total_steps: int
    losses: dict[str, float]
    seconds: float  # wall time since the run started


@dataclass(frozen=True)
class EpochEnd:
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Preview:
    """A prediction of the model as it is now, for a live preview layer."""

    step: int
    data: np.ndarray  # labels (uint8/uint16, values 1..K) or image (float32)
    z: int | None = None  # slice index for stacks, None for 2D


@dataclass(frozen=True)
class Checkpointed:
    step: int
    path: str


@dataclass(frozen=True)
class PredictionTile:
    done: int  # tiles finished so far, over all slices
    total: int


@dataclass(frozen=True)
class PredictionSlice:
    """A slice of the result is complete (written to its output); ``index`` counts from 0."""

    index: int
    count: int


@dataclass(frozen=True)
class OutputOpened:
    """A result streamed to disk exists now (filled slice by slice): ``path`` of the zarr image, its output ``key``."""

    path: str
    key: str


@dataclass(frozen=True)
class FileStarted:
    """A batch run begins on input file ``index`` (of ``count``)."""

    index: int
    count: int
    path: str
    output: str


@dataclass(frozen=True)
class FileEnded:
    """A batch run is done with input file ``index``: ``status`` is done, skipped or failed (``reason`` says why)."""

    index: int
    count: int
    path: str
    output: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    note: str = ""  # done: what the user should know of the result (e.g. the leak-correction shares used)


@dataclass(frozen=True)
class RunFinished:
    result: Any  # FinetuneResult / PredictResult from api
    seconds: float


@dataclass(frozen=True)
class RunCancelled:
    step: int
    seconds: float
    result: Any = None  # what was kept (e.g. the model trained so far), or None


Event = (RunStarted | StepEnd | EpochEnd | Preview | Checkpointed | PredictionTile | PredictionSlice | OutputOpened | FileStarted | FileEnded
         | RunFinished | RunCancelled)
