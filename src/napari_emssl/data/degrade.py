"""Reusable image degradations for EM, in numpy: noise at a dose, blur, scan distortions, resampling.

Every function works on the last two axes of an array (``(..., Y, X)``: one image, a stack
or a batch), returns a new float32 array and leaves its input unchanged. Random functions
take a :class:`numpy.random.Generator`, so a seed gives the same result every time.

Intensity convention: images are in "unit intensity" (about 0..1 for the clean signal).
``dose`` is the expected number of detected electrons for unit intensity in one pixel, so
a pixel of clean value ``s`` sees ``Poisson(s * dose)`` electrons and its relative noise
falls as ``1 / sqrt(s * dose)``.

The bicubic resampling here matches ``torch.nn.functional.interpolate(mode="bicubic",
align_corners=False)`` (Keys kernel with ``a = -0.75``, border pixels repeated), so a
numpy baseline and the torch model input of the super-resolution task are the same image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

__all__ = [
    "poisson_gaussian",
    "gaussian_blur",
    "downscale_area",
    "upscale_bicubic",
    "resize_cubic",
    "scan_distort",
]

_EXACT_POISSON_BELOW = 30.0  # expected counts; above it the normal approximation is used
_KEYS_A = -0.75  # torch's (and OpenCV's) bicubic kernel parameter


def poisson_gaussian(
    image: np.ndarray, rng: np.random.Generator, dose: float, read_sigma: float = 0.0
) -> np.ndarray:
    """Shot noise at ``dose`` electrons per unit intensity plus Gaussian read noise.

    Returns ``Poisson(max(image, 0) * dose) / dose + read_sigma * N(0, 1)``: the expected
    value is the (non-negative part of the) image, the shot-noise variance is
    ``image / dose`` and the read noise is given in the same intensity units as the image.
    Pixels expecting at least 30 electrons use the rounded normal approximation of the
    Poisson law (indistinguishable at that count, and several times faster).
    """
    if not dose > 0:
        raise ValueError(f"dose must be positive, got {dose}")
    lam = np.clip(np.asarray(image, dtype=np.float32), 0.0, None) * np.float32(dose)
    counts = np.rint(lam + np.sqrt(lam) * rng.standard_normal(lam.shape, dtype=np.float32))
    low = lam < _EXACT_POISSON_BELOW
    if low.any():
        counts[low] = rng.poisson(lam[low])
    out = (np.clip(counts, 0.0, None) / np.float32(dose)).astype(np.float32)
    if read_sigma > 0:
        out += np.float32(read_sigma) * rng.standard_normal(out.shape, dtype=np.float32)
    return out


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of the last two axes with standard deviation ``sigma`` pixels (reflect borders)."""
    image = np.asarray(image, dtype=np.float32)
    if sigma <= 0:
        return image.copy()
    sigmas = (0.0,) * (image.ndim - 2) + (float(sigma), float(sigma))
    return ndimage.gaussian_filter(image, sigmas, mode="reflect").astype(np.float32, copy=False)


def downscale_area(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks (area downscaling, like a detector with bigger pixels).

    Rows and columns beyond the last whole block are dropped, so ``(..., Y, X)`` becomes
    ``(..., Y // factor, X // factor)``. Matches ``torch.nn.functional.avg_pool2d(x, factor)``.
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be a positive whole number, got {factor}")
    image = np.asarray(image, dtype=np.float32)
    ny, nx = image.shape[-2] // factor, image.shape[-1] // factor
    if ny == 0 or nx == 0:
        raise ValueError(f"image of shape {image.shape} is smaller than one {factor}x{factor} block")
    crop = image[..., : ny * factor, : nx * factor]
    blocks = crop.reshape(*image.shape[:-2], ny, factor, nx, factor)
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(np.float32)


def _keys(t: np.ndarray) -> np.ndarray:
    """Keys (1981) cubic convolution kernel with parameter ``a`` = -0.75, at distances ``t``."""
    t = np.abs(t)
    a = _KEYS_A
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _cubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices ``(n_out, 4)`` and weights ``(n_out, 4)`` for resampling one axis.

    Output pixel ``i`` samples the source at ``(i + 0.5) * n_in / n_out - 0.5`` (pixel
    centres aligned, ``align_corners=False``); indices past the border are clamped.
    """
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    x0 = np.floor(x)
    t = x - x0
    offsets = np.arange(-1, 3)
    idx = np.clip(x0[:, None].astype(np.int64) + offsets, 0, n_in - 1)
    weights = _keys(t[:, None] - offsets)
    return idx, weights.astype(np.float32)


def _resample_axis(image: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    idx, w = _cubic_taps(image.shape[axis], n_out)
    shape = [1] * image.ndim
    shape[axis] = n_out
    out = np.zeros(image.shape[:axis] + (n_out,) + image.shape[axis + 1 :], dtype=np.float32)
    for k in range(4):
        out += np.take(image, idx[:, k], axis=axis) * w[:, k].reshape(shape)
    return out


def resize_cubic(image: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Resample the last two axes to ``shape_yx`` with the bicubic (Keys) kernel, separably."""
    image = np.asarray(image, dtype=np.float32)
    out = _resample_axis(image, image.ndim - 2, int(shape_yx[0]))
    return _resample_axis(out, image.ndim - 1, int(shape_yx[1]))


def upscale_bicubic(image: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic upscaling of the last two axes by a whole ``factor`` (as torch's ``interpolate``)."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be a positive whole number, got {factor}")
    image = np.asarray(image, dtype=np.float32)
    return resize_cubic(image, (image.shape[-2] * factor, image.shape[-1] * factor))


def scan_distort(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    jitter: float = 0.5,
    jitter_corr: float = 0.7,
    line_offset: float = 0.0,
    line_gain: float = 0.0,
    drift: float = 0.0,
) -> np.ndarray:
    """Raster-scan artefacts of a scanning microscope (STEM/SEM), row by row (rows = fast scan lines).

    - ``jitter``: each row is shifted along X by a sub-pixel amount (standard deviation in
      pixels), an AR(1) sequence over rows with correlation ``jitter_corr`` (the probe
      position wanders between lines); linear interpolation, borders repeated.
    - ``line_offset``: an additive offset per row (white across rows, standard deviation in
      intensity units), e.g. detector/amplifier baseline flicker.
    - ``line_gain`` / ``drift``: a multiplicative gain per row, ``1 + line_gain * N(0,1)``
      per row plus a random walk across rows whose total excursion has standard deviation
      ``drift`` (slow line-to-line intensity drift).

    Apply jitter before shot noise (it moves the probe) and offsets/gain after it (they act
    on the detector signal); :func:`scan_distort` can be called twice with the others at 0.
    """
    image = np.asarray(image, dtype=np.float32)
    ny, nx = image.shape[-2:]
    out = image
    if jitter > 0:
        c = float(np.clip(jitter_corr, 0.0, 0.999))
        innov = rng.standard_normal(ny)
        innov[1:] *= np.sqrt(1.0 - c * c)  # stationary AR(1) with unit variance
        shifts = jitter * signal.lfilter([1.0], [1.0, -c], innov)
        xs = np.arange(nx, dtype=np.float64)[None, :] - shifts[:, None]  # (ny, nx) sample positions
        x0 = np.floor(xs)
        t = (xs - x0).astype(np.float32)
        i0 = np.clip(x0.astype(np.int64), 0, nx - 1)
        i1 = np.clip(i0 + 1, 0, nx - 1)
        lead = image.shape[:-2]
        i0b = np.broadcast_to(i0, lead + (ny, nx))
        i1b = np.broadcast_to(i1, lead + (ny, nx))
        out = np.take_along_axis(image, i0b, axis=-1) * (1 - t) + np.take_along_axis(image, i1b, axis=-1) * t
    if line_gain > 0 or drift > 0:
        gain = 1.0 + line_gain * rng.standard_normal(ny)
        if drift > 0:
            walk = np.cumsum(rng.standard_normal(ny)) / np.sqrt(ny)
            gain = gain + drift * (walk - walk.mean())
        out = out * gain.astype(np.float32)[:, None]
    if line_offset > 0:
        out = out + np.float32(line_offset) * rng.standard_normal((ny, 1)).astype(np.float32)
    return np.array(out, dtype=np.float32)
