"""What follows a self-supervised denoiser's prediction: the mean correction and the leak correction.

Both work on one normalised 2D plane after the network (and after the views are averaged),
with numpy and scipy only; :mod:`~napari_emssl.prediction` and the fine-tune preview apply
them, and :mod:`~napari_emssl.tasks.denoise` re-exports them.

Mean correction (after prediction, on by default, ``mean_correction`` px): the loss is
dominated by the noise (its variance is the floor of every masked pixel's squared error), so
a slowly varying offset of the output costs almost nothing and is barely trained away; on a
smooth STEM image the error coarser than 16 px was 2.4 times BM3D's. Because the noise has
zero mean, the Gaussian low-pass of the residual ``noisy - restored`` estimates that offset
(the noise averaged over thousands of pixels), and :func:`mean_correction` adds it back:
the result keeps the input's local mean, which is also what the blind-spot loss asks for.
Only for self-supervised models (a paired target may differ from the input in brightness).

Leak correction (after prediction, on by default, ``leak_correction``, a fraction): a network
that sees every pixel at inference lets a share of that pixel's own noise through. Near a pixel
``i`` its output behaves as ``out = (1 - J) * b + J * y``, with ``y`` the noisy value, ``b``
what it predicts from the neighbours alone and ``J = d out_i / d y_i`` the weight it gives the
pixel itself. On smooth images that weight is higher than the best one (on the smooth detector
benchmark image about 0.04-0.05 where taking all of it out is best), on images with detail at
the pixel scale it is about right (docs/benchmarks.md, "Leak correction"). The default,
``"auto"``, chooses the share for each slice (:func:`correct_leak`): Stein's unbiased risk
estimate of the corrected output's error is quadratic in ``f`` (:func:`sure_leak_share`), given
the noise variance, which :func:`noise_variance` estimates from the slice itself; clipped to
``[0, LEAK_AUTO_MAX]``. A fixed share (0.5 was the default before) is still a choice. ``J`` is measured with one
more pass of the network on the input plus a random ``+-`` probe (:func:`leak_probe`): the
change of each output pixel times its own probe sign, divided by the probe size, averaged over a
Gaussian window of 8 px (where the other pixels' probes, of independent signs, cancel;
:func:`own_pixel_weight`). :func:`leak_correction` then removes the share ``f`` of it, ``out - f
* J / (1 - J) * (y - out)``, which equals ``b + (1 - f) * J * (y - b)``: ``f = 1`` is the
neighbours-only (J-invariant) estimate, ``f = 0`` the network's output. Applied before the mean
correction; one extra network pass per slice (an 8-view average takes 9). Only for self-
supervised models.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from ..config import LEAK_AUTO, LEAK_AUTO_MAX, MEAN_CORRECTION

__all__ = ["LEAK_PROBE", "LEAK_WINDOW", "LEAK_MAX_WEIGHT", "mean_correction", "leak_probe", "probed_input",
           "own_pixel_weight", "probe_response", "noise_variance", "sure_leak_share", "correct_leak", "leak_setting",
           "leak_share_text", "leak_correction"]


def mean_correction(restored: np.ndarray, noisy: np.ndarray, sigma: float = MEAN_CORRECTION) -> np.ndarray:
    """``restored + G_sigma(noisy - restored)``: a 2D plane with the slowly varying part of its error removed.

    ``G_sigma`` is a Gaussian low-pass of ``sigma`` pixels (borders reflected). The noise has zero
    mean, so the low-pass of the residual is the output's local offset from the input's mean
    plus the noise averaged over about ``4 pi sigma**2`` pixels (at 16 px, its std divided by 57).
    ``sigma`` 0 returns ``restored`` unchanged. float32 out.
    """
    restored = np.asarray(restored, dtype=np.float32)
    if restored.ndim != 2 or np.shape(noisy) != restored.shape:
        raise ValueError(f"mean_correction takes two 2D planes of one shape, got {restored.shape} and {np.shape(noisy)}")
    if not sigma:
        return restored
    residual = np.asarray(noisy, dtype=np.float32) - restored
    return (restored + gaussian_filter(residual, float(sigma), mode="reflect")).astype(np.float32)


LEAK_PROBE = 0.01  # size of the +-probe, in normalised intensity (the 1st..99.8th percentile range is 1)
LEAK_WINDOW = 8.0  # sigma (px) of the Gaussian window over which the own-pixel weight is averaged
LEAK_MAX_WEIGHT = 0.5  # the own-pixel weight is clipped to [0, 0.5] (a blind-spot network stays far below)
NOISE_BINS = 16  # noise_variance: bins of the signal level in which the noise variance is measured
NOISE_MIN_BLOCKS = 50  # noise_variance: fewest 2 x 2 blocks for a bin to count


def leak_probe(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random signs, ``+1`` or ``-1`` per pixel (float32), seeded so that a prediction repeats exactly."""
    return np.random.default_rng(seed).choice(np.array([-1.0, 1.0], np.float32), size=tuple(shape))


def probed_input(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(plane + LEAK_PROBE * probe, probe)``: the input of the probe pass and its signs (:func:`leak_probe`)."""
    probe = leak_probe(np.shape(plane))
    return (np.asarray(plane, dtype=np.float32) + LEAK_PROBE * probe).astype(np.float32), probe


def own_pixel_weight(plain: np.ndarray, probed: np.ndarray, probe: np.ndarray, step: float = LEAK_PROBE,
                     window: float = LEAK_WINDOW) -> np.ndarray:
    """Local mean of ``d out_i / d in_i``, the weight the network gives each pixel's own value.

    ``plain`` is the output for the input, ``probed`` the output for the input plus ``step *
    probe`` (:func:`leak_probe`). ``(probed - plain) * probe / step`` is the own weight plus the
    other pixels' weights times products of independent signs, which the Gaussian window of
    ``window`` px averages away. Clipped to ``[0, 0.5]``; float32, the plane's shape.
    """
    plain = np.asarray(plain, dtype=np.float32)
    if plain.ndim != 2 or np.shape(probed) != plain.shape or np.shape(probe) != plain.shape:
        raise ValueError(f"own_pixel_weight takes three 2D planes of one shape, got {plain.shape}, {np.shape(probed)}, "
                         f"{np.shape(probe)}")
    raw = probe_response(plain, probed, probe, step)
    return np.clip(gaussian_filter(raw, float(window), mode="reflect"), 0.0, LEAK_MAX_WEIGHT).astype(np.float32)


def probe_response(plain: np.ndarray, probed: np.ndarray, probe: np.ndarray, step: float = LEAK_PROBE) -> np.ndarray:
    """``(probed - plain) * probe / step`` per pixel: the own-pixel weight plus zero-mean cross terms (float32).

    Unsmoothed, so its sum over a plane is an unbiased estimate of the sum of the own-pixel weights
    (the divergence of the network's output), which :func:`sure_leak_share` needs.
    """
    plain = np.asarray(plain, dtype=np.float32)
    return ((np.asarray(probed, dtype=np.float32) - plain) * np.asarray(probe, dtype=np.float32) / float(step)).astype(np.float32)


def _blocks(plane: np.ndarray) -> np.ndarray:
    """``plane`` as its 2 x 2 blocks, ``(Y/2, 2, X/2, 2)`` float64 (an odd last row or column dropped)."""
    ny, nx = (s // 2 * 2 for s in plane.shape)
    return np.asarray(plane, dtype=np.float64)[:ny, :nx].reshape(ny // 2, 2, nx // 2, 2)


def _diagonal_details(plane: np.ndarray) -> np.ndarray:
    """The finest diagonal Haar details of ``plane``: the noise's std kept, constants and ramps removed."""
    q = _blocks(plane)
    return (q[:, 0, :, 0] - q[:, 0, :, 1] - q[:, 1, :, 0] + q[:, 1, :, 1]) / 2.0


def _mad_variance(values: np.ndarray) -> float:
    """Robust variance: (1.4826 x the median absolute deviation) squared."""
    return float((1.4826 * np.median(np.abs(values - np.median(values)))) ** 2)


def noise_variance(noisy: np.ndarray, level: np.ndarray, bins: int = NOISE_BINS) -> np.ndarray:
    """The noise variance per pixel of a 2D plane, from the plane alone (Poisson-Gaussian: linear in the signal).

    The finest diagonal Haar details of ``noisy`` keep the noise and remove smooth signal; their
    robust variance (median absolute deviation) in ``bins`` bins of equal count of ``level`` (an
    estimate of the signal, the same shape) is fitted as ``a * level + c`` and evaluated at every
    pixel. Too few blocks for the bins: one variance for the whole plane. Detail at the pixel
    scale inflates it (about 14 % on an SEM micrograph of nanowires in docs/benchmarks.md, 0-5 %
    on the other benchmark images). float64, at least 1e-12.
    """
    noisy = np.asarray(noisy, dtype=np.float64)
    level = np.asarray(level, dtype=np.float64)
    if noisy.ndim != 2 or level.shape != noisy.shape:
        raise ValueError(f"noise_variance takes two 2D planes of one shape, got {noisy.shape} and {level.shape}")
    detail = _diagonal_details(noisy).ravel()
    if detail.size == 0:
        return np.full(noisy.shape, max(float(np.var(noisy)), 1e-12))
    mean = _blocks(level).mean(axis=(1, 3)).ravel()
    order = np.argsort(mean, kind="stable")
    xs, vs = [], []
    for part in np.array_split(order, bins):
        if part.size >= NOISE_MIN_BLOCKS:
            xs.append(float(mean[part].mean()))
            vs.append(_mad_variance(detail[part]))
    if len(xs) < 2 or np.ptp(xs) <= 0:
        return np.full(noisy.shape, max(_mad_variance(detail), 1e-12))
    slope, offset = np.polyfit(np.asarray(xs), np.asarray(vs), 1)
    return np.maximum(slope * level + offset, 1e-12)


def sure_leak_share(restored: np.ndarray, noisy: np.ndarray, weight: np.ndarray, response: np.ndarray,
                    variance: np.ndarray, upper: float = LEAK_AUTO_MAX) -> float:
    """The leak-correction share that Stein's unbiased risk estimate (SURE) expects to restore ``noisy`` best.

    The corrected output is ``x_f = out - f K (y - out)`` with ``K = J / (1 - J)`` (``weight`` is
    ``J``, :func:`own_pixel_weight`). SURE, ``|x_f - y|^2 + 2 sum s2_i d x_f,i / d y_i - sum s2``,
    is quadratic in ``f``; its divergence uses each pixel's own measured weight ``response``
    (:func:`probe_response`, unsmoothed: an 8 px average of it would miss the pixels where the
    weight and the noise variance ``s2`` (``variance``, :func:`noise_variance`) vary together).
    The minimum, ``f* = (sum s2 K (1 - response) - sum K d^2) / sum K^2 d^2`` with ``d = out - y``,
    is clipped to ``[0, upper]``; 0 when the network gives no weight to the pixels themselves.
    """
    weight = np.asarray(weight, dtype=np.float64)
    gain = weight / (1.0 - weight)
    d2 = (np.asarray(restored, dtype=np.float64) - np.asarray(noisy, dtype=np.float64)) ** 2
    denominator = float(np.sum(gain * gain * d2))
    numerator = float(np.sum(np.asarray(variance, dtype=np.float64) * gain * (1.0 - np.asarray(response, dtype=np.float64)))
                      - np.sum(gain * d2))
    if not (denominator > 0 and np.isfinite(denominator) and np.isfinite(numerator)):
        return 0.0
    return float(np.clip(numerator / denominator, 0.0, upper))


def correct_leak(restored: np.ndarray, noisy: np.ndarray, plain: np.ndarray, probed: np.ndarray, probe: np.ndarray,
                 share: float | str) -> tuple[np.ndarray, float]:
    """:func:`leak_correction` of a predicted plane: ``(corrected, share used)``.

    ``restored`` is the views' average, ``plain`` the first (identity) view's output and ``probed``
    its output for the input plus the probe (:func:`probed_input`). ``share`` is a number, or
    ``"auto"``: the share :func:`sure_leak_share` chooses for this plane, with the noise variance of
    :func:`noise_variance` at the level of the neighbours-only estimate.
    """
    weight = own_pixel_weight(plain, probed, probe)
    if share == LEAK_AUTO:
        level = (np.asarray(restored, dtype=np.float64) - weight * np.asarray(noisy, dtype=np.float64)) / (1.0 - weight)
        share = sure_leak_share(restored, noisy, weight, probe_response(plain, probed, probe), noise_variance(noisy, level))
    return leak_correction(restored, noisy, weight, float(share)), float(share)


def leak_setting(value: Any) -> float | str:
    """A leak-correction setting as the package applies it: "auto", or the share as a float."""
    return LEAK_AUTO if value == LEAK_AUTO else float(value)


def leak_share_text(shares: list[float]) -> str:
    """The leak-correction share(s) a prediction used, in words ("" for none)."""
    if not shares:
        return ""
    if len(shares) == 1 or min(shares) == max(shares):
        return f"leak correction share {shares[0]:.2f}"
    return f"leak correction shares {min(shares):.2f}-{max(shares):.2f} over {len(shares)} slices (mean {np.mean(shares):.2f})"


def leak_correction(restored: np.ndarray, noisy: np.ndarray, weight: np.ndarray,
                    fraction: float) -> np.ndarray:
    """``restored - f * J / (1 - J) * (noisy - restored)``: the share ``f`` of each pixel's own value taken out again.

    ``weight`` is ``J`` (:func:`own_pixel_weight`, below 1). With the output written as ``(1 - J) b
    + J noisy`` the result is ``b + (1 - f) J (noisy - b)``. ``fraction`` 0 returns ``restored``
    unchanged. float32 out.
    """
    restored = np.asarray(restored, dtype=np.float32)
    if restored.ndim != 2 or np.shape(noisy) != restored.shape or np.shape(weight) != restored.shape:
        raise ValueError(f"leak_correction takes three 2D planes of one shape, got {restored.shape}, {np.shape(noisy)}, "
                         f"{np.shape(weight)}")
    if not fraction:
        return restored
    weight = np.asarray(weight, dtype=np.float32)
    gain = float(fraction) * weight / (1.0 - weight)
    return (restored - gain * (np.asarray(noisy, dtype=np.float32) - restored)).astype(np.float32)
