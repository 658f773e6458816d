"""Image-quality metrics of restorations: PSNR and SSIM on 2D images and stacks.

Both wrap scikit-image (``peak_signal_noise_ratio``, ``structural_similarity``) with an
explicit data range, because the default (inferred from the dtype: 1 or 2 for floats) is
meaningless for normalised EM images.

Data-range convention: ``data_range = reference.max() - reference.min()`` over the whole
reference array (all slices of a stack together), unless given. Every slice of a stack is
scored with that same range, and the stack's score is the mean over slices. Pass the
range explicitly to compare runs on different references (e.g. 1.0 for images normalised
to 0..1). SSIM uses the settings of Wang et al. 2004 (Gaussian window, sigma 1.5, K1 =
0.01, K2 = 0.03, population covariance), shrinking the window for images under 11 pixels.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["data_range_of", "psnr", "ssim", "restoration_metrics"]


def _pair(reference: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference, dtype=np.float64)
    image = np.asarray(image, dtype=np.float64)
    if reference.shape != image.shape:
        raise ValueError(f"reference shape {reference.shape} differs from image shape {image.shape}")
    if reference.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image (Y, X) or a stack (Z, Y, X), got shape {reference.shape}")
    return reference, image


def data_range_of(reference: np.ndarray) -> float:
    """``max - min`` of the reference (1.0 for a constant reference, so scores stay finite)."""
    reference = np.asarray(reference)
    span = float(reference.max() - reference.min())
    return span if span > 0 else 1.0


def _slices(a: np.ndarray) -> list[np.ndarray]:
    return [a] if a.ndim == 2 else list(a)


def psnr(reference: np.ndarray, image: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``; mean over slices of a stack.

    Identical slices give ``inf`` (and so does the mean).
    """
    reference, image = _pair(reference, image)
    dr = data_range_of(reference) if data_range is None else float(data_range)
    with np.errstate(divide="ignore"):
        scores = [peak_signal_noise_ratio(r, i, data_range=dr) for r, i in zip(_slices(reference), _slices(image))]
    return float(np.mean(scores))


def ssim(reference: np.ndarray, image: np.ndarray, data_range: float | None = None) -> float:
    """Structural similarity (Wang et al. 2004), mean over pixels and over slices of a stack."""
    reference, image = _pair(reference, image)
    dr = data_range_of(reference) if data_range is None else float(data_range)
    side = min(reference.shape[-2:])
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {reference.shape[-2:]}")
    kwargs = dict(data_range=dr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    if side < 11:  # skimage's Gaussian window spans 11 pixels for sigma 1.5
        kwargs["win_size"] = side if side % 2 else side - 1
    scores = [structural_similarity(r, i, **kwargs) for r, i in zip(_slices(reference), _slices(image))]
    return float(np.mean(scores))


def restoration_metrics(reference: np.ndarray, image: np.ndarray, data_range: float | None = None) -> dict[str, float]:
    """``psnr``, ``ssim``, ``l1`` and ``mse`` of ``image`` against ``reference`` (one shared data range)."""
    reference, image = _pair(reference, image)
    dr = data_range_of(reference) if data_range is None else float(data_range)
    diff = image - reference
    return {"psnr": psnr(reference, image, dr), "ssim": ssim(reference, image, dr),
            "l1": float(np.abs(diff).mean()), "mse": float((diff**2).mean())}
