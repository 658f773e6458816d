"""Denoising: self-supervised blind-spot training on the noisy image itself, or paired training.

Self-supervised (no clean image needed) follows Noise2Void (Krull, Buchholz, Jug 2019,
"Noise2Void - learning denoising from single noisy images", CVPR) and Noise2Self (Batson &
Royer 2019, "Noise2Self: blind denoising by self-supervision", ICML): if the noise is
independent from pixel to pixel and zero-mean, a network that cannot see a pixel's own
value, trained to predict that noisy value from its neighbours, learns the clean signal.
The blind spot is made at the input: a small random subset of pixels is replaced by
values that do not contain themselves, and the loss (MSE) is taken on those pixels only.

Choices here, against known artefacts:
- positions are stratified random: one pixel drawn uniformly inside every cell of a
  ``s x s`` grid whose origin is shifted at random per sample (``s = round(1/sqrt(fraction))``),
  so the coverage is even but there is no regular lattice of masked pixels (a fixed grid
  is what leaves checkerboard artefacts);
- the replacement never contains the pixel itself: the mean of its unmasked 8 neighbours
  (the Noise2Self "donut" interpolation, default; masked neighbours are left out because
  their own replacement holds this pixel's value) or one of its unmasked 8 neighbours chosen
  at random (``replace="neighbour"``: Noise2Void without the centre); borders are mirrored
  without repeating the edge pixel, so the centre is never its own neighbour.

What the replacement decides: a pixel that shows the mean of its neighbours is smoother
than any real noisy pixel, so the network can tell the hidden pixels apart, and how it
responds to a pixel's own value is never trained; at inference it sees every pixel's own
value and lets a share of it through, noise and fine detail alike. A random neighbour looks
like any other pixel: the network learns to treat the centre like one more neighbour, and
plain inference then agrees with predicting each pixel while it is hidden (Noise2Self's
J-invariant inference). Which is better depends on the image (docs/benchmarks.md, "What a
masked pixel shows"): the share let through helps where the image holds fine detail at
the pixel scale and hurts on smooth images.

Re-visible loss (the default, ``loss="re-visible"``; Wang, Liu, Li, Han 2022, "Blind2Unblind:
self-supervised image denoising with visible blind spots", CVPR): the blind-spot loss alone
never trains how the network uses a pixel's own value, which plain inference then gives it.
With the mean replacement the network can tell hidden pixels apart, and the re-visible term
ties the two outputs together: on the hidden pixels, with ``b`` the network's output for
the masked patch, ``v`` its output for the unmasked patch (no gradient) and ``y`` the noisy
value, the loss is ``(b - y)**2 + (b - y + beta * (v - y))**2``. ``beta`` is 2 for the first
80 % of the steps, then rises linearly to 20 (the paper's schedule for shot noise), so the
visible output, which is what inference gives, is pulled towards the blind-spot estimate
while it keeps what the pixel's own value adds. One more forward pass per step (no
backward): about 40 % more training time on a CPU. Measured in docs/benchmarks.md.

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

Limits: noise that is correlated between neighbouring pixels (scan-line offsets, jitter,
detector afterglow) is partly learned as signal and stays in the output.

Paired mode (a clean target) uses the L1 + L2 restoration loss
(:func:`~napari_emssl.tasks.restoration.restoration_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ..config import DENOISE_LOSSES, LEAK_AUTO, LEAK_AUTO_MAX, LEAK_CORRECTION, MASK_REPLACEMENTS, MEAN_CORRECTION
from ..errors import InputError
from .restoration import LossFn, SampleFn, make_paired_loss_fn, to_tensor

__all__ = ["REPLACEMENTS", "LOSSES", "MEAN_CORRECTION", "LEAK_CORRECTION", "LEAK_PROBE", "cell_size", "mean_correction",
           "leak_probe", "probed_input", "own_pixel_weight", "probe_response", "noise_variance", "sure_leak_share",
           "correct_leak", "leak_share_text", "leak_correction", "blind_spot_mask", "blind_spot_batch", "denoise_loss", "revisible_beta",
           "revisible_loss", "make_denoise_loss_fn"]

REPLACEMENTS = MASK_REPLACEMENTS  # ("mean", "neighbour"): the first is the default
LOSSES = DENOISE_LOSSES  # ("re-visible", "blind-spot"): the first is the default
REVISIBLE_BETA = (2.0, 20.0)  # the re-visible weight: at the start, at the end of training
REVISIBLE_RAMP_FROM = 0.8  # share of the steps after which the weight rises linearly
_NEIGHBOURS = torch.tensor([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])


def cell_size(fraction: float) -> int:
    """Side of the stratification cell for a masked ``fraction`` (one pixel per cell)."""
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"the masked fraction must be in (0, 1], got {fraction}")
    return max(1, round(1.0 / math.sqrt(fraction)))


def blind_spot_mask(
    shape: tuple[int, int, int, int] | torch.Size,
    fraction: float = 0.01,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool mask ``(B, 1, H, W)``: one random pixel per ``s x s`` cell, the cell grid shifted at random per sample.

    The expected masked fraction is ``1 / s**2`` (about ``fraction``). Random numbers come
    from ``generator`` (on its device) and the mask is moved to ``device``.
    """
    b, _, h, w = (int(v) for v in shape)
    s = cell_size(fraction)
    gen_device = generator.device if generator is not None else torch.device(device or "cpu")
    ny, nx = -(-h // s) + 1, -(-w // s) + 1  # one extra cell row/column to cover the shift
    shift = torch.randint(0, s, (b, 2, 1, 1), generator=generator, device=gen_device)
    inner = torch.randint(0, s, (b, 2, ny, nx), generator=generator, device=gen_device)
    ys = torch.arange(ny, device=gen_device).view(1, ny, 1) * s - shift[:, 0] + inner[:, 0]
    xs = torch.arange(nx, device=gen_device).view(1, 1, nx) * s - shift[:, 1] + inner[:, 1]
    valid = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    bi = torch.arange(b, device=gen_device).view(b, 1, 1).expand(b, ny, nx)
    flat = (bi * h + ys) * w + xs
    mask = torch.zeros(b * h * w, dtype=torch.bool, device=gen_device)
    mask[flat[valid]] = True
    return mask.view(b, 1, h, w).to(device if device is not None else gen_device)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror indices -1 -> 1 and size -> size - 2 (the edge pixel is not repeated)."""
    index = torch.where(index < 0, -index, index)
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def blind_spot_batch(
    images: torch.Tensor,
    fraction: float = 0.01,
    *,
    generator: torch.Generator | None = None,
    replace: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a batch ``(B, C, H, W)`` for blind-spot training; returns ``(masked_input, mask)``.

    ``mask`` is ``(B, 1, H, W)`` bool (the same positions in every channel). At masked
    pixels the input holds the mean of the unmasked 8 neighbours (``replace="mean"``) or a
    random one of them (``"neighbour"``): no pixel of the input holds a masked pixel's own value.
    Needs H, W >= 2.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if replace not in REPLACEMENTS:
        raise InputError(f"replace must be one of {', '.join(REPLACEMENTS)}, got {replace!r}")
    b, c, h, w = images.shape
    if h < 2 or w < 2:
        raise InputError(f"blind-spot masking needs images of at least 2x2 pixels, got {h}x{w}")
    mask = blind_spot_mask(images.shape, fraction, generator=generator, device=images.device)
    keep = (~mask).to(images.dtype)
    # shown where no neighbour is unmasked (a corner, or a fraction above about 0.44): the mean of the unmasked pixels
    fallback = (images * keep).sum(dim=(2, 3), keepdim=True) / keep.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    if replace == "mean":
        # mean of the unmasked ones among the 8 neighbours: a masked neighbour's replacement holds this
        # pixel's value, so using it would leak the value the network must not see
        kernel = torch.ones(1, 1, 3, 3, dtype=images.dtype, device=images.device)
        kernel[..., 1, 1] = 0.0
        pad = (1, 1, 1, 1)
        total = F.conv2d(F.pad(images * keep, pad, mode="reflect").reshape(b * c, 1, h + 2, w + 2), kernel).reshape(b, c, h, w)
        count = F.conv2d(F.pad(keep, pad, mode="reflect"), kernel)  # mirrors without the edge pixel, like _reflect
        values = torch.where(count > 0, total / count.clamp_min(1.0), fallback)
        return torch.where(mask, values, images), mask
    # one of the unmasked ones among the 8 neighbours, at random: a masked neighbour may itself show this
    # pixel's value, so it is never picked
    bi, _, yi, xi = mask.nonzero(as_tuple=True)
    gen_device = generator.device if generator is not None else images.device
    offsets = _NEIGHBOURS.to(images.device)
    ny = _reflect(yi[:, None] + offsets[:, 0], h)  # (masked pixels, 8)
    nx = _reflect(xi[:, None] + offsets[:, 1], w)
    scores = torch.rand((bi.numel(), 8), generator=generator, device=gen_device).to(images.device)
    scores = scores.masked_fill(mask[bi[:, None], 0, ny, nx], -1.0)
    pick = scores.argmax(dim=1, keepdim=True)
    free = scores.gather(1, pick) >= 0  # (masked pixels, 1)
    shown = images[bi, :, ny.gather(1, pick)[:, 0], nx.gather(1, pick)[:, 0]]
    masked = images.clone()
    masked[bi, :, yi, xi] = torch.where(free, shown, fallback[bi, :, 0, 0])
    return masked, mask


def denoise_loss(
    net: torch.nn.Module,
    images: torch.Tensor,
    *,
    fraction: float = 0.01,
    generator: torch.Generator | None = None,
    replace: str = "mean",
) -> dict[str, torch.Tensor]:
    """Blind-spot loss: MSE between ``net(masked)`` and the noisy ``images`` on the masked pixels only.

    Returns ``loss`` and ``masked_fraction`` (a float tensor, for the log).
    """
    masked, mask = blind_spot_batch(images, fraction, generator=generator, replace=replace)
    pred = net(masked).float()
    weight = mask.to(pred.dtype)
    loss = _masked_mean((pred - images.float()) ** 2, weight)
    return {"loss": loss, "masked_fraction": weight.mean().detach()}


def _masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(B, C, H, W)`` over the masked pixels (``weight`` ``(B, 1, H, W)``, 1 where masked) and channels."""
    return (values * weight).sum() / (weight.sum() * values.shape[1]).clamp_min(1.0)


def revisible_beta(progress: float, start: float = REVISIBLE_BETA[0], end: float = REVISIBLE_BETA[1],
                   ramp_from: float = REVISIBLE_RAMP_FROM) -> float:
    """Weight of the re-visible term at ``progress`` (0 .. 1 of the steps): ``start``, then linear to ``end``."""
    progress = min(max(float(progress), 0.0), 1.0)
    if progress <= ramp_from:
        return start
    return start + (progress - ramp_from) / (1.0 - ramp_from) * (end - start)


def revisible_loss(
    net: torch.nn.Module,
    images: torch.Tensor,
    *,
    beta: float,
    fraction: float = 0.01,
    generator: torch.Generator | None = None,
    replace: str = "mean",
) -> dict[str, torch.Tensor]:
    """Blind-spot loss plus the re-visible term, on the masked pixels (see the module docstring).

    ``(b - y)**2 + (b - y + beta * (v - y))**2`` with ``b = net(masked)``, ``v = net(images)``
    computed without gradient. Returns ``objective`` (that sum, what the trainer optimises),
    ``loss`` (the first term alone, what is shown: the same quantity as :func:`denoise_loss`, while
    the second grows with ``beta``), ``beta`` and ``masked_fraction``.
    """
    masked, mask = blind_spot_batch(images, fraction, generator=generator, replace=replace)
    blind = net(masked).float()
    with torch.no_grad():
        visible = net(images).float()
    target = images.float()
    weight = mask.to(blind.dtype)
    diff = blind - target
    blind_term = _masked_mean(diff**2, weight)
    revisible = _masked_mean((diff + beta * (visible - target)) ** 2, weight)
    return {"objective": blind_term + revisible, "loss": blind_term.detach(),
            "beta": torch.tensor(float(beta)), "masked_fraction": weight.mean().detach()}


def make_denoise_loss_fn(
    sample: SampleFn,
    batch_size: int,
    device: torch.device | str,
    *,
    paired: bool = False,
    fraction: float = 0.01,
    replace: str = "mean",
    seed: int = 0,
    loss: str = "blind-spot",
    progress: Callable[[], float] | None = None,
) -> LossFn:
    """The trainer's ``loss_fn(net)`` for denoising.

    ``paired=False``: ``sample(batch_size)`` gives noisy patches (its targets are ignored,
    e.g. ``PatchSampler(norm, None, patch).sample``) and the blind-spot loss is used, with
    masks drawn from a CPU generator seeded with ``seed``. ``paired=True``: the sampler gives
    ``(noisy, clean)`` (e.g. :class:`~napari_emssl.tasks.restoration.PairedPatchSampler`)
    and the L1 + L2 loss is used. ``loss="re-visible"`` adds the re-visible term, weighted by
    :func:`revisible_beta` of ``progress()`` (the share of the training done, e.g. the trainer's
    step over the total; required then).
    """
    if paired:
        return make_paired_loss_fn(sample, batch_size, device)
    cell_size(fraction)  # fail early on a bad fraction
    if loss not in LOSSES:
        raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if loss == "re-visible" and progress is None:
        raise ValueError("the re-visible loss needs progress(), the share of the training done")
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))

    def loss_fn(net: torch.nn.Module) -> dict[str, torch.Tensor]:
        x, _ = sample(batch_size)
        images = to_tensor(x, device)
        if loss == "re-visible":
            return revisible_loss(net, images, beta=revisible_beta(progress()), fraction=fraction, generator=generator,
                                  replace=replace)
        return denoise_loss(net, images, fraction=fraction, generator=generator, replace=replace)

    return loss_fn


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
