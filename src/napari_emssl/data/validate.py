"""Checks on images and labels that turn bad input into one clear sentence."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["check_image", "check_float32_range", "check_labels", "count_nonfinite", "is_constant"]

_CHUNK = 1 << 24  # elements per block when scanning big arrays


def _blocks(array: np.ndarray):
    """Yield views of ``array`` of about ``_CHUNK`` elements along the first axis."""
    if array.ndim == 0 or array.shape[0] == 0:
        yield array
        return
    per_row = max(1, array.size // array.shape[0])
    step = max(1, _CHUNK // per_row)
    for start in range(0, array.shape[0], step):
        yield array[start : start + step]


def count_nonfinite(array: np.ndarray) -> int:
    """Number of NaN or infinite values (0 for integer arrays), scanned in blocks."""
    if array.dtype.kind not in "fc":
        return 0
    return int(sum(array_block.size - np.count_nonzero(np.isfinite(array_block)) for array_block in _blocks(array)))


def is_constant(array: np.ndarray) -> bool:
    """Every value the same (bool images too, which ``np.ptp`` refuses)."""
    array = np.asarray(array)
    return array.size == 0 or bool(array.min() == array.max())


def check_image(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Refuse anything that is not a 2D image or 3D stack of finite grey values.

    Accepts any bool/int/uint/float dtype; constant images are allowed. Returns the same
    array object (no copy) when given an ndarray.
    """
    image = np.asarray(image)
    kind = image.dtype.kind
    if kind == "c":
        raise InputError(f"The {name} has complex pixel values ({image.dtype}); expected real grey values (integer or float).")
    if kind not in "biuf":
        raise InputError(f"The {name} has pixel type {image.dtype}; expected numeric grey values (integer or float).")
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4:
        raise InputError(
            f"The {name} has shape {image.shape}, which looks like an RGB/multichannel image; EM images are "
            "greyscale (Y, X) or stacks (Z, Y, X): convert it to one channel first."
        )
    if image.ndim not in (2, 3):
        raise InputError(
            f"The {name} has {image.ndim} dimensions (shape {image.shape}); expected a 2D image (Y, X) or a 3D stack (Z, Y, X)."
        )
    if image.size == 0:
        raise InputError(f"The {name} is empty (shape {image.shape}); expected at least one pixel along every axis.")
    bad = count_nonfinite(image)
    if bad:
        raise InputError(
            f"The {name} contains {bad} pixel{'s' if bad != 1 else ''} that are NaN or infinite out of {image.size}; "
            "expected finite values: replace them (e.g. with 0) first."
        )
    check_float32_range(image, name)
    return image


def check_float32_range(image: np.ndarray, name: str = "image") -> None:
    """Refuse grey values beyond float32's range (results are float32 in the image's units)."""
    if image.dtype.kind != "f" or image.dtype.itemsize <= 4 or image.size == 0:
        return
    limit = float(np.finfo(np.float32).max)
    peak = max(float(np.abs(block).max()) for block in _blocks(image))
    if peak > limit:
        raise InputError(f"The {name} holds values up to {peak:.3g}, beyond the float32 range (about {limit:.3g}) that "
                         "results are computed in; rescale the image (e.g. to 0-1 or to its detector counts) first.")


def _as_int_labels(labels: np.ndarray, what: str = "labels") -> np.ndarray:
    kind = labels.dtype.kind
    if kind == "b":
        return labels.astype(np.int64)
    if kind in "iu":
        if kind == "u" and labels.dtype.itemsize == 8 and labels.size and labels.max() > np.iinfo(np.int64).max:
            raise InputError(f"The {what} contain values above {np.iinfo(np.int64).max}; expected small class numbers 0, 1, 2, ...")
        out = labels.astype(np.int64, copy=False)
    elif kind == "f":
        bad = count_nonfinite(labels)
        if bad:
            raise InputError(f"The {what} contain {bad} NaN or infinite values; expected whole numbers 0, 1, 2, ...")
        frac = sum(int(np.count_nonzero(b != np.round(b))) for b in _blocks(labels))
        if frac:
            raise InputError(
                f"The {what} contain {frac} non-whole values; expected whole numbers: 0 = not painted, "
                "1 = background, 2, 3, ... = classes."
            )
        out = labels.astype(np.int64)
    else:
        raise InputError(f"The {what} have type {labels.dtype}; expected whole numbers 0, 1, 2, ... (a Labels layer).")
    if out.size:
        low = int(out.min())
        if low < 0:
            n = int(sum(np.count_nonzero(b < 0) for b in _blocks(out)))
            raise InputError(
                f"The {what} contain {n} pixels with negative values (lowest {low}); expected 0 = not painted, "
                "1 = background, 2, 3, ... = classes."
            )
    return out


def check_labels(labels: np.ndarray, image_shape) -> np.ndarray:
    """Check painted labels against the image shape; return them as int64 (view when possible)."""
    labels = np.asarray(labels)
    image_shape = tuple(int(n) for n in image_shape)
    if labels.shape != image_shape:
        raise InputError(
            f"The labels have shape {labels.shape} but the image has shape {image_shape}; "
            "paint the labels on this image so both have the same size and number of slices."
        )
    return _as_int_labels(labels)
