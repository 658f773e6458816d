"""Sparse painted labels (napari convention) -> training targets.

0 = not painted (ignored), 1 = background, 2, 3, ... = classes. The network has
K = max(label) outputs; target value ``c - 1`` for label ``c``, :data:`IGNORE_INDEX` for 0.
Gaps in the numbering are allowed (an unused class simply never gets a target).
"""

from __future__ import annotations

import numpy as np

from . import IGNORE_INDEX
from .validate import _as_int_labels, _blocks
from ..errors import InputError

__all__ = ["IGNORE_INDEX", "MAX_CLASSES", "painted_classes", "class_counts", "sparse_targets", "painted_slices", "check_trainable"]

MAX_CLASSES = 255
"""Largest accepted label value: a stray value like 1000 would otherwise make a 1000-class model."""


def class_counts(labels: np.ndarray) -> dict[int, int]:
    """Painted pixels per class ``{class: count}`` (classes > 0 only), scanned in blocks."""
    labels = np.asarray(labels)
    counts: dict[int, int] = {}
    for block in _blocks(labels):
        values, n = np.unique(block[block > 0], return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[int(v)] = counts.get(int(v), 0) + int(c)
    return dict(sorted(counts.items()))


def painted_classes(labels: np.ndarray) -> list[int]:
    """Sorted label values > 0 that occur in ``labels``."""
    return list(class_counts(labels))


def sparse_targets(labels: np.ndarray) -> np.ndarray:
    """int64 targets: label ``c >= 1`` -> ``c - 1``; 0 (unpainted) -> ``IGNORE_INDEX`` (-100)."""
    labels = np.asarray(labels)
    out = labels.astype(np.int64) - 1
    out[labels <= 0] = IGNORE_INDEX
    return out


def painted_slices(labels: np.ndarray) -> list[int]:
    """Indices of the z slices that hold at least one painted pixel.

    For a 3D stack ``(Z, Y, X)``: the slice indices. For a 2D image the image counts as the
    single slice 0: ``[0]`` when anything is painted, else ``[]``.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return [0] if np.any(labels > 0) else []
    if labels.ndim != 3:
        raise InputError(f"The labels have {labels.ndim} dimensions (shape {labels.shape}); expected 2D (Y, X) or 3D (Z, Y, X).")
    return [z for z in range(labels.shape[0]) if np.any(labels[z] > 0)]


def check_trainable(labels: np.ndarray) -> list[int]:
    """Painted classes, refusing labels that cannot train a segmentation (fewer than two classes).

    The number of model outputs is ``K = max(classes)``.
    """
    labels = _as_int_labels(np.asarray(labels))
    classes = painted_classes(labels)
    if not classes:
        raise InputError(
            "Nothing is painted in the labels; paint at least two classes: 1 = background and 2 = the "
            "structure to segment (0 means not painted)."
        )
    if len(classes) == 1:
        raise InputError(
            f"Only class {classes[0]} is painted; paint at least two classes: 1 = background and 2, 3, ... "
            "= the structures to segment."
        )
    if classes[-1] > MAX_CLASSES:
        raise InputError(
            f"The labels use value {classes[-1]}; expected class numbers 1..K with K at most {MAX_CLASSES}: "
            "repaint that region with a smaller label value."
        )
    return classes
