"""Robust percentile normalisation of EM images (whole image or whole stack at once)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError

__all__ = ["NormStats", "percentile_normalize", "subsample"]

_MAX_SAMPLES = 1 << 22  # ~4 M values are plenty for the 1st / 99.8th percentile


@dataclass(frozen=True)
class NormStats:
    """Percentiles asked for (``low``, ``high``) and the grey values found there.

    The normalised image is ``(x - p_low) / (p_high - p_low)``. For a constant image
    ``p_high = p_low + 1`` (scale 1), so applying stored stats never divides by zero.
    """

    low: float
    high: float
    p_low: float
    p_high: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "NormStats":
        try:
            values = {k: float(data[k]) for k in ("low", "high", "p_low", "p_high")}
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"Stored normalisation {data!r} is incomplete; expected numbers for low, high, p_low and p_high."
            ) from exc
        if not all(math.isfinite(v) for v in values.values()) or values["p_high"] <= values["p_low"]:
            raise InputError(f"Stored normalisation {values} is invalid; expected finite values with p_high > p_low.")
        return cls(**values)


def subsample(image: np.ndarray, max_samples: int = _MAX_SAMPLES) -> np.ndarray:
    """Deterministic strided subsample of at most about ``max_samples`` values (a view when possible).

    For C-contiguous arrays a flat stride coprime with the row length is used (no column
    aliasing); otherwise one stride per axis.
    """
    image = np.asarray(image)
    if image.size <= max_samples:
        return image.reshape(-1)
    if image.flags.c_contiguous:
        step = -(-image.size // max_samples)
        width = image.shape[-1]
        while math.gcd(step, width) != 1:
            step += 1
        return image.reshape(-1)[::step]
    per_axis = (image.size / max_samples) ** (1.0 / image.ndim)
    slices = tuple(slice(None, None, max(1, int(math.ceil(per_axis)))) for _ in image.shape)
    return image[slices].reshape(-1)


def percentile_normalize(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, *, stats: NormStats | None = None
) -> tuple[np.ndarray, NormStats]:
    """Map the ``low``-th percentile to 0 and the ``high``-th to 1 (values beyond are kept, not clipped).

    Percentiles are computed over the whole array (all slices of a stack together) on a
    deterministic subsample, so a 1e9-pixel stack takes well under a second. A constant
    image maps to 0 (scale 1). With ``stats`` the stored ``p_low`` / ``p_high`` are applied
    and nothing is computed. Returns a new float32 array and the stats used.
    """
    image = np.asarray(image)
    if stats is None:
        if not (0.0 <= low < high <= 100.0):
            raise InputError(f"Normalisation percentiles low={low}, high={high} are invalid; expected 0 <= low < high <= 100.")
        sample = subsample(image)
        if sample.dtype.kind == "b":
            sample = sample.astype(np.uint8)
        p_low, p_high = (float(v) for v in np.percentile(sample, [low, high]))
        if not (math.isfinite(p_low) and math.isfinite(p_high)):
            raise InputError("The image contains NaN or infinite values; expected finite grey values for normalisation.")
        if p_high <= p_low:  # very flat histogram: fall back to the full range
            lo, hi = float(sample.min()), float(sample.max())
            p_low, p_high = (lo, hi) if hi > lo else (p_low, p_low + 1.0)
        stats = NormStats(low=float(low), high=float(high), p_low=p_low, p_high=p_high)
    scale = stats.p_high - stats.p_low
    if not scale > 0:
        scale = 1.0
    if image.dtype.kind == "f" and image.dtype.itemsize > 4:
        # float64 grey values may lie beyond float32's range: scale in float64, keep the result finite
        wide = (image - np.float64(stats.p_low)) * np.float64(1.0 / scale)
        limit = np.finfo(np.float32).max
        return np.clip(wide, -limit, limit).astype(np.float32), stats
    out = np.empty(image.shape, dtype=np.float32)
    src = image.astype(np.uint8, copy=False) if image.dtype.kind == "b" else image
    np.subtract(src, np.float64(stats.p_low), out=out, casting="unsafe")
    out *= np.float32(1.0 / scale)
    return out, stats
