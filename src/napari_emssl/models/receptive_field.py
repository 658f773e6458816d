"""Receptive fields: computed from a layer description, and measured by gradients.

A network is described, along one image axis, as a set of *paths* from its input to its
output; a path is a sequence of layers (:class:`Conv`, :class:`Pool`, :class:`Upsample`).
A U-Net has one path per depth: down to level ``m``, through the skip connection there,
and back up (1x1 convolutions and residual shortcuts only ever shrink a path's field, so
they need no path of their own).

Two numbers come out:

``nominal_receptive_field``
    The classic formula ``1 + sum((k_eff - 1) * jump)`` (Araujo, Norris & Sim, Distill 2019),
    with the jump (input pixels per feature pixel) halved again by each upsampling. This is
    the convention of Sytwu et al. 2022 and Kazimi et al. 2024, whose U-Net names quote it.

``receptive_field``
    The exact width of the input interval that one output pixel depends on, maximised over
    output positions. Down- and upsampling by 2 make that set depend on the output pixel's
    position modulo the total stride, so the exact value can differ from the nominal one by a
    few pixels. This is the worst case, the number a tiler can rely on, and it is what the
    brute-force gradient measurement (:func:`measure_input_intervals`) reproduces.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence, Union

__all__ = [
    "Conv",
    "Pool",
    "Upsample",
    "Layer",
    "nominal_receptive_field",
    "input_interval",
    "receptive_field",
    "receptive_field_reach",
    "path_period",
    "measure_input_intervals",
]


@dataclass(frozen=True)
class Conv:
    """A convolution along one axis; ``padding=None`` means 'same' (``dilation * (kernel - 1) // 2``)."""

    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    padding: int | None = None

    @property
    def pad(self) -> int:
        return self.dilation * (self.kernel - 1) // 2 if self.padding is None else self.padding


@dataclass(frozen=True)
class Pool:
    """Max or average pooling (same geometry as a convolution with dilation 1)."""

    kernel: int = 2
    stride: int = 2
    padding: int = 0


@dataclass(frozen=True)
class Upsample:
    """Upsampling by an integer factor.

    ``mode="nearest"`` also describes a transposed convolution with ``kernel == stride ==
    factor`` (each output pixel sees one input pixel). ``mode="bilinear"`` is PyTorch's
    ``interpolate(..., align_corners=False)``: each output pixel sees up to two input pixels.
    """

    factor: int = 2
    mode: str = "nearest"

    def __post_init__(self) -> None:
        if self.mode not in ("nearest", "bilinear"):
            raise ValueError(f"unknown upsampling mode {self.mode!r}")


Layer = Union[Conv, Pool, Upsample]
Path = Sequence[Layer]


def nominal_receptive_field(paths: Sequence[Path]) -> int:
    """Classic receptive-field formula, maximised over paths (rounded up if fractional)."""
    best = Fraction(0)
    for path in paths:
        jump, size = Fraction(1), Fraction(1)
        for layer in path:
            if isinstance(layer, Conv):
                size += (layer.kernel - 1) * layer.dilation * jump
                jump *= layer.stride
            elif isinstance(layer, Pool):
                size += (layer.kernel - 1) * jump
                jump *= layer.stride
            else:
                if layer.mode == "bilinear":
                    size += jump  # two neighbouring coarse pixels
                jump /= layer.factor
        best = max(best, size)
    return math.ceil(best)


def _back(layer: Layer, lo: int, hi: int) -> tuple[int, int]:
    """Input interval that the output interval ``[lo, hi]`` of ``layer`` depends on."""
    if isinstance(layer, Conv):
        return lo * layer.stride - layer.pad, hi * layer.stride - layer.pad + (layer.kernel - 1) * layer.dilation
    if isinstance(layer, Pool):
        return lo * layer.stride - layer.padding, hi * layer.stride - layer.padding + layer.kernel - 1
    f = layer.factor
    if layer.mode == "nearest":
        return lo // f, hi // f
    # bilinear, align_corners=False: output i reads source coordinate (i + 0.5) / f - 0.5
    src_lo = Fraction(2 * lo + 1, 2 * f) - Fraction(1, 2)
    src_hi = Fraction(2 * hi + 1, 2 * f) - Fraction(1, 2)
    top = math.floor(src_hi)
    return math.floor(src_lo), top + (1 if src_hi > top else 0)


def input_interval(paths: Sequence[Path], position: int) -> tuple[int, int]:
    """Inclusive input interval that output pixel ``position`` depends on (far from borders)."""
    lows, highs = [], []
    for path in paths:
        lo = hi = position
        for layer in reversed(list(path)):
            lo, hi = _back(layer, lo, hi)
        lows.append(lo)
        highs.append(hi)
    return min(lows), max(highs)


def path_period(paths: Sequence[Path]) -> int:
    """Output positions whose intervals repeat: the lcm of the total strides of the paths."""
    period = 1
    for path in paths:
        total = 1
        for layer in path:
            if isinstance(layer, (Conv, Pool)):
                total *= layer.stride
        period = math.lcm(period, total)
    return period


def _intervals_over_period(paths: Sequence[Path]) -> list[tuple[int, int, int]]:
    period = path_period(paths)
    origin = 1 << 20  # far from any border, a multiple of every period we meet
    out = []
    for x in range(origin, origin + period):
        lo, hi = input_interval(paths, x)
        out.append((x, lo, hi))
    return out


def receptive_field(paths: Sequence[Path]) -> int:
    """Exact receptive field: widest input interval over all output positions."""
    return max(hi - lo + 1 for _, lo, hi in _intervals_over_period(paths))


def receptive_field_reach(paths: Sequence[Path]) -> tuple[int, int]:
    """Largest distance the field reaches before and after the output pixel (for halos)."""
    spans = _intervals_over_period(paths)
    return max(x - lo for x, lo, _ in spans), max(hi - x for x, _, hi in spans)


# ----------------------------------------------------------------------------------------
# brute-force measurement


def _positive_copy(model):
    """A float64 copy whose every activation is positive, so no ReLU hides a dependency.

    Weights become positive and roughly mean-preserving, biases zero, batch norms identity
    (evaluation mode, so no statistics mix pixels), and max pools become average pools with
    the same geometry (a max pool passes gradient to one pixel per window only).
    """
    import torch
    from torch import nn

    net = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(0)

    def swap_pools(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
            else:
                swap_pools(child)

    swap_pools(net)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
                raise ValueError(f"{type(module).__name__} mixes pixels; cannot measure a receptive field")
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                if module.affine:
                    module.weight.fill_(1.0)
                    module.bias.zero_()
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                w = module.weight
                w.copy_(torch.rand(w.shape, generator=gen, dtype=w.dtype) + 0.5)
                # scale so one output is about the mean of its inputs
                if isinstance(module, nn.ConvTranspose2d):
                    taps = w.shape[0] * max(1, (w.shape[2] // module.stride[0]) * (w.shape[3] // module.stride[1]))
                else:
                    taps = w[0].numel()
                w.div_(taps)
                if module.bias is not None:
                    module.bias.zero_()
    return net


def measure_input_intervals(
    model,
    in_channels: int,
    positions: Sequence[int],
    length: int,
    width: int = 32,
    batch: int = 8,
) -> list[tuple[int, int]]:
    """Measure, by gradients, the input rows that each output row in ``positions`` depends on.

    The input is ``length`` rows by ``width`` columns; for each position ``p`` the gradient of
    output pixel ``(p, width // 2)`` (summed over channels) with respect to the input is taken,
    and the first and last rows where it is non-zero are returned. Choose ``length`` so the
    field does not touch the image border, or the result is clipped there. A thin input
    (small ``width``) keeps this cheap for large fields: the architectures here treat both
    axes alike, so one axis tells the field of both.
    """
    import torch

    net = _positive_copy(model)
    found: list[tuple[int, int]] = []
    positions = list(positions)
    for start in range(0, len(positions), batch):
        chunk = positions[start : start + batch]
        x = (torch.rand(len(chunk), in_channels, length, width, dtype=torch.float64) + 0.5).requires_grad_(True)
        y = net(x)
        picked = torch.stack([y[i, :, p, width // 2].sum() for i, p in enumerate(chunk)])
        (grad,) = torch.autograd.grad(picked.sum(), x)
        for i in range(len(chunk)):
            rows = torch.nonzero(grad[i].abs().sum(dim=(0, 2)) > 0).flatten()
            if rows.numel() == 0:
                raise RuntimeError("output does not depend on the input at all")
            lo, hi = int(rows.min()), int(rows.max())
            if rows.numel() != hi - lo + 1:
                raise RuntimeError("the measured field has holes")
            found.append((lo, hi))
    return found
