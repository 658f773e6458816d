"""Random flips, 90-degree rotations, intensity changes and noise for training patches."""

from __future__ import annotations

import numpy as np

__all__ = ["augment_pair"]

_GAMMA = (0.7, 1.4)
_CONTRAST = (0.85, 1.15)
_BRIGHTNESS = 0.1
_NOISE_SIGMA = 0.08


def _intensity(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, gamma, contrast, brightness, mean) -> np.ndarray:
    """The same monotone grey-value map, applicable to image and (float) target alike."""
    if gamma is not None:
        span = np.maximum(hi - lo, 1e-6)
        u = np.clip((x - lo) / span, 0.0, None)
        x = np.power(u, gamma, dtype=np.float32) * span + lo
    if contrast is not None:
        x = (x - mean) * contrast + mean + brightness
    return x.astype(np.float32, copy=False)


def augment_pair(
    image_patch: np.ndarray,
    target_patch: np.ndarray,
    rng: np.random.Generator,
    *,
    flips: bool = True,
    rot90: bool = True,
    intensity: bool = True,
    noise: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment an image patch ``(C, H, W)`` float32 and its target the same way.

    The target is ``(H, W)`` int64 class targets or ``(C2, H2, W2)`` float (a clean or
    high-resolution image; its size may differ from the image, e.g. super-resolution).
    Geometric ops (flips with p=0.5 per axis, rotation by k*90 degrees when both patches are
    square) are applied identically to both. Intensity changes (gamma 0.7-1.4 on the
    patch's own min-max range with p=0.5; contrast x0.85-1.15 and brightness +-0.1 with
    p=0.5) go to the image and, when the target is a float image, the same map to the
    target, so image->target stays consistent. Gaussian noise (sigma uniform in 0-0.08,
    p=0.5) goes to the image only. Returns contiguous copies; the inputs are not changed.
    """
    img = np.asarray(image_patch, dtype=np.float32)
    tgt = np.asarray(target_patch)
    if img.ndim != 3:
        raise ValueError(f"image_patch must be (C, H, W), got shape {img.shape}")
    if tgt.ndim not in (2, 3):
        raise ValueError(f"target_patch must be (H, W) or (C, H, W), got shape {tgt.shape}")
    axes = (-2, -1)

    if flips:
        if rng.random() < 0.5:
            img, tgt = img[..., ::-1], tgt[..., ::-1]
        if rng.random() < 0.5:
            img, tgt = img[..., ::-1, :], tgt[..., ::-1, :]
    if rot90 and img.shape[-1] == img.shape[-2] and tgt.shape[-1] == tgt.shape[-2]:
        k = int(rng.integers(4))
        if k:
            img, tgt = np.rot90(img, k, axes=axes), np.rot90(tgt, k, axes=axes)

    img = np.array(img, dtype=np.float32, order="C")  # always a fresh copy
    tgt = np.array(tgt, order="C")

    if intensity:
        gamma = float(rng.uniform(*_GAMMA)) if rng.random() < 0.5 else None
        if rng.random() < 0.5:
            contrast = np.float32(rng.uniform(*_CONTRAST))
            brightness = np.float32(rng.uniform(-_BRIGHTNESS, _BRIGHTNESS))
        else:
            contrast = brightness = None
        if gamma is not None or contrast is not None:
            lo = img.min(axis=(-2, -1), keepdims=True)
            hi = img.max(axis=(-2, -1), keepdims=True)
            mean = img.mean(axis=(-2, -1), keepdims=True, dtype=np.float32)
            img = _intensity(img, lo, hi, gamma, contrast, brightness, mean)
            if tgt.dtype.kind == "f":
                if tgt.ndim == 3 and tgt.shape[0] != img.shape[0]:  # channel counts differ: use channel 0 stats
                    lo, hi, mean = lo[:1], hi[:1], mean[:1]
                tgt = _intensity(tgt.astype(np.float32), lo, hi, gamma, contrast, brightness, mean)
    if noise and rng.random() < 0.5:
        sigma = np.float32(rng.uniform(0.0, _NOISE_SIGMA))
        img += sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.ascontiguousarray(img), np.ascontiguousarray(tgt)
