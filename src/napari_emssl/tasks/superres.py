"""Super-resolution by a whole factor (2 or 4), self-supervised from the image itself or paired.

Self-supervised pairs (as in zero-shot super-resolution, Shocher, Cohen, Irani 2018,
"'Zero-shot' super-resolution using deep internal learning", CVPR): the user's image is
downscaled further by the factor with area averaging (a detector with ``factor`` times
larger pixels, :func:`downscale_area`), and the network learns that low -> high mapping;
it is then applied to the image itself, assuming the structures look alike one scale up.
Paired mode uses a real high-resolution target of the same field of view. The loss is
L1 + L2 (Kazimi et al. 2024; TEMImageNet super-resolution, Lin et al. 2021).

Model input, so that every registered architecture works unchanged (same input and
output size, one channel): the low-resolution image is upsampled bicubically to the
target grid (:func:`upsample_bicubic`) and the network predicts a residual on top of it:
``output = up + net(up)`` (:func:`superres_forward`), as in VDSR (Kim, Lee, Lee 2016). With
the output layer zeroed first (:func:`zero_output_layer`) training starts exactly at the
bicubic baseline, and the network only has to add the detail.

Inference (how a trained model is applied to a user image of pixel size ``d``):
1. normalise the image as in training (percentile map);
2. upsample it bicubically by the factor (:func:`upscale_input`, the numpy twin of
   :func:`upsample_bicubic`): shape ``(Y * f, X * f)``;
3. run the network tiled on that grid with the residual added (:func:`residual_fn` wraps
   the tiler's numpy forward function);
4. self-supervised models only (``back_projection`` steps recorded in the model, 5 by
   default): iterative back-projection onto the input (:func:`back_project`), so that the
   result's ``f x f`` block means are the input's, the degradation the pairs assumed;
5. the result has pixel size ``d / f`` (scale = source scale / factor; the origin of the
   first pixel moves by ``-(f - 1) / (2 f)`` source pixels, as pixel centres are aligned).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.degrade import downscale_area as downscale_area_np
from ..data.degrade import upscale_bicubic
from ..errors import InputError
from .restoration import LossFn, SampleFn, make_paired_loss_fn, restoration_loss, to_tensor

__all__ = [
    "FACTORS",
    "downscale_area",
    "upsample_bicubic",
    "superres_pair",
    "superres_forward",
    "superres_loss",
    "make_superres_loss_fn",
    "upscale_input",
    "residual_fn",
    "output_scale",
    "zero_output_layer",
    "output_translate",
    "back_project",
]

FACTORS = (2, 4)


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or int(factor) != factor or int(factor) < 1:
        raise InputError(f"the super-resolution factor must be a whole number >= 1 (2 or 4), got {factor!r}")
    return int(factor)


def downscale_area(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Average ``factor x factor`` blocks of ``(B, C, H, W)``; rows/columns past the last whole block are dropped."""
    factor = _check_factor(factor)
    return F.avg_pool2d(images, factor) if factor > 1 else images


def upsample_bicubic(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upsampling of ``(B, C, H, W)`` by ``factor`` (pixel centres aligned; Keys kernel a = -0.75)."""
    factor = _check_factor(factor)
    if factor == 1:
        return images
    return F.interpolate(images, scale_factor=factor, mode="bicubic", align_corners=False)


def superres_pair(images: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-supervised pair from high-resolution patches ``(B, C, H, W)``: ``(low, high)``.

    ``high`` is ``images`` cropped to a multiple of ``factor``; ``low`` its area
    downscaling, ``(B, C, H // factor, W // factor)``.
    """
    factor = _check_factor(factor)
    h, w = images.shape[-2] // factor * factor, images.shape[-1] // factor * factor
    if h == 0 or w == 0:
        raise InputError(f"patches of {tuple(images.shape[-2:])} pixels are smaller than the factor {factor}")
    high = images[..., :h, :w]
    return downscale_area(high, factor), high


def superres_forward(net: torch.nn.Module, low: torch.Tensor, factor: int) -> torch.Tensor:
    """``up + net(up)`` with ``up = upsample_bicubic(low, factor)``: the high-resolution estimate."""
    up = upsample_bicubic(low, factor)
    return up + net(up)


def superres_loss(net: torch.nn.Module, low: torch.Tensor, high: torch.Tensor, factor: int) -> dict[str, torch.Tensor]:
    """L1 + L2 of :func:`superres_forward` against ``high``; ``bicubic_l1`` logs the baseline's L1."""
    up = upsample_bicubic(low, factor)
    losses = restoration_loss(up + net(up), high)
    losses["bicubic_l1"] = F.l1_loss(up.float(), high.float()).detach()
    return losses


def make_superres_loss_fn(
    sample: SampleFn,
    batch_size: int,
    device: torch.device | str,
    factor: int = 2,
    *,
    paired: bool = False,
) -> LossFn:
    """The trainer's ``loss_fn(net)`` for super-resolution by ``factor``.

    ``paired=False``: ``sample(batch_size)`` gives patches of the user's (normalised)
    image, e.g. ``PatchSampler(norm, None, patch).sample`` with ``patch`` a multiple of
    ``factor`` and of the network's size multiple; each is turned into ``(low, high)`` by
    :func:`superres_pair`. ``paired=True``: the sampler gives ``(low, high)`` directly,
    e.g. :class:`~napari_emssl.tasks.restoration.PairedPatchSampler` with ``factor``.
    """
    factor = _check_factor(factor)
    if paired:
        return make_paired_loss_fn(sample, batch_size, device, forward=lambda net, x: superres_forward(net, x, factor))

    def loss_fn(net: torch.nn.Module) -> dict[str, torch.Tensor]:
        x, _ = sample(batch_size)
        low, high = superres_pair(to_tensor(x, device), factor)
        return superres_loss(net, low, high, factor)

    return loss_fn


def zero_output_layer(net: torch.nn.Module) -> torch.nn.Module:
    """Zero the weights and bias of the network's output convolutions, so ``net(x) == 0`` at the start.

    Then :func:`superres_forward` starts as plain bicubic upsampling instead of bicubic plus
    the noise of a random head (a "zero convolution"); the head still learns, as its
    gradient does not depend on its own weights. The output convolutions are those the
    network names in ``output_layers()`` (HRNet: its head and its refinement, whose outputs
    are summed), else the last ``Conv2d`` registered in the module tree (``head`` of the
    residual U-Nets); returns ``net``.
    """
    named = getattr(net, "output_layers", None)
    convs = list(named()) if callable(named) else [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1:]
    if not convs:
        raise InputError("the network has no Conv2d layer to zero")
    with torch.no_grad():
        for conv in convs:
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()
    return net


def upscale_input(image: np.ndarray, factor: int) -> np.ndarray:
    """Inference step 2: the (normalised) image ``(..., Y, X)`` upsampled bicubically to ``(..., Y*f, X*f)``."""
    return upscale_bicubic(image, _check_factor(factor))


def residual_fn(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a tiler forward function ``(B,1,H,W) -> (B,1,H,W)`` (numpy) as ``x -> x + fn(x)``.

    The wrapper keeps ``fn``'s device path (``device_fn``, ``device``: tensors on the device), if any.
    """

    def wrapped(x: np.ndarray) -> np.ndarray:
        return x + fn(x)

    device_fn = getattr(fn, "device_fn", None)
    wrapped.device_fn = (lambda x: x + device_fn(x)) if device_fn is not None else None
    wrapped.device = getattr(fn, "device", None)
    return wrapped


def back_project(restored: np.ndarray, low: np.ndarray, factor: int, steps: int) -> np.ndarray:
    """Iterative back-projection (Irani & Peleg 1991): ``steps`` times ``x <- x + bicubic(low - area_downscale(x))``.

    Makes an upscaled plane ``restored`` ``(Y * f, X * f)`` consistent with its input ``low``
    ``(Y, X)`` under the degradation the self-supervised pairs assume (area averaging over ``f x
    f`` blocks): afterwards its block means are, within a fraction of a percent, the input's,
    and the detail the network added stays where it agrees with them. The reference a
    benchmark scores against satisfies that exactly, so the step moves towards it (measured on
    the benchmark images in docs/benchmarks.md, "Synthetic lattice pairs").
    ``steps`` 0 returns ``restored``; float32 out.
    """
    factor = _check_factor(factor)
    x = np.asarray(restored, dtype=np.float32)
    low = np.asarray(low, dtype=np.float32)
    if x.shape != (low.shape[0] * factor, low.shape[1] * factor):
        raise ValueError(f"back_project takes a plane {low.shape} and its x{factor} upscaling, got {x.shape}")
    for _ in range(int(steps)):
        x = x + upscale_bicubic(low - downscale_area_np(x, factor), factor)
    return x.astype(np.float32)


def output_scale(scale: tuple[float, ...], factor: int) -> tuple[float, ...]:
    """Pixel size of the result: the source's Y and X pixel sizes divided by the factor (Z unchanged)."""
    factor = _check_factor(factor)
    scale = tuple(float(s) for s in scale)
    return scale[:-2] + tuple(s / factor for s in scale[-2:])


def output_translate(translate: tuple[float, ...], scale: tuple[float, ...], factor: int) -> tuple[float, ...]:
    """World position of the result's first pixel: its centre sits ``(f - 1) / (2 f)`` source pixels before the source's.

    napari places pixel centres at ``translate + index * scale``; the ``f x f`` output
    pixels covering source pixel 0 have centres from ``-(f - 1) / (2 f)`` to
    ``+(f - 1) / (2 f)`` source pixels around it (Z unchanged).
    """
    factor = _check_factor(factor)
    translate = tuple(float(t) for t in translate)
    scale = tuple(float(s) for s in scale)
    shift = -(factor - 1) / (2 * factor)
    return translate[:-2] + tuple(t + s * shift for t, s in zip(translate[-2:], scale[-2:]))
