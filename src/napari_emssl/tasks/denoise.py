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

Two corrections follow prediction for self-supervised models, the mean correction and the
leak correction: :mod:`~napari_emssl.tasks.denoise_corrections` (re-exported here).

Limits: noise that is correlated between neighbouring pixels (scan-line offsets, jitter,
detector afterglow) is partly learned as signal and stays in the output.

Paired mode (a clean target) uses the L1 + L2 restoration loss
(:func:`~napari_emssl.tasks.restoration.restoration_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import DENOISE_LOSSES, LEAK_CORRECTION, MASK_REPLACEMENTS, MEAN_CORRECTION
from ..errors import InputError
from .denoise_corrections import (LEAK_MAX_WEIGHT, LEAK_PROBE, LEAK_WINDOW, correct_leak, leak_correction, leak_probe,
                                  leak_setting, leak_share_text, mean_correction, noise_variance, own_pixel_weight, probe_response,
                                  probed_input, sure_leak_share)
from .restoration import LossFn, SampleFn, make_paired_loss_fn, to_tensor

__all__ = ["REPLACEMENTS", "LOSSES", "MEAN_CORRECTION", "LEAK_CORRECTION", "LEAK_PROBE", "LEAK_WINDOW", "LEAK_MAX_WEIGHT", "cell_size", "mean_correction",
           "leak_probe", "probed_input", "own_pixel_weight", "probe_response", "noise_variance", "sure_leak_share",
           "correct_leak", "leak_setting", "leak_share_text", "leak_correction", "blind_spot_mask", "blind_spot_batch", "denoise_loss", "revisible_beta",
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
