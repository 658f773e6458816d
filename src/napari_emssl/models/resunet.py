"""Residual U-Net with a configurable receptive field (Sytwu et al. 2022; Kazimi et al. 2024).

Residual block: two 3x3 convolutions with batch norm (ReLU after the first and after the
sum) plus a 1x1 convolution on the shortcut. ``blocks`` residual blocks go down (each
followed by a 2x2 max pool), one more forms the bottleneck, and ``blocks`` come back up
(2x2 transposed convolution or bilinear upsampling + 1x1 convolution, then concatenation
with the skip). Channels start at ``base_channels`` and double per level. ``dilations``
gives one dilation per level (``blocks + 1`` values, the last for the bottleneck), used by
both 3x3 convolutions of the encoder and decoder blocks at that level.

The paper variants ``resunet_b{B}_rf{N}``: the dilations below make the classic
receptive-field formula (the papers' convention) give exactly the papers' N. The exact
worst-case field (``receptive_field``, checked against gradients in the tests) equals N for
2 blocks and is 4 pixels larger (or smaller at some positions) for 3 and 4 blocks, because
pooling and upsampling make the field depend on the output pixel's position; no choice of
dilations gives 96 or 200 exactly, so the names keep the papers' numbers.

Parameter names: ``encoder.levels.{l}.*`` (level ``blocks`` is the bottleneck),
``decoder.levels.{l}.up.*`` / ``decoder.levels.{l}.block.*`` and ``head.*``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ModelFormatError
from .receptive_field import Conv, Layer, Pool, Upsample, nominal_receptive_field, receptive_field
from .registry import register_model

__all__ = ["ResidualBlock", "ResUNet", "resunet_paths", "PAPER_VARIANTS"]

UPSAMPLE_MODES = ("transpose", "bilinear")

# (blocks, paper receptive field) -> per-level dilations (last = bottleneck)
PAPER_VARIANTS: dict[tuple[int, int], tuple[int, ...]] = {
    (2, 44): (1, 1, 1),
    (2, 84): (2, 2, 2),
    (2, 116): (2, 3, 3),
    (3, 96): (1, 1, 1, 1),
    (3, 176): (1, 2, 2, 2),
    (3, 240): (1, 2, 3, 3),
    (4, 200): (1, 1, 1, 1, 1),
    (4, 360): (1, 1, 2, 2, 2),
    (4, 424): (1, 1, 2, 2, 3),
}


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a 1x1 convolution shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.skip(x))


class ResUNetEncoder(nn.Module):
    """``levels[0..blocks-1]`` with a max pool before each deeper one; ``levels[blocks]`` is the bottleneck."""

    def __init__(self, in_channels: int, channels: Sequence[int], dilations: Sequence[int]) -> None:
        super().__init__()
        self.channels = list(channels)
        ins = [in_channels, *channels[:-1]]
        self.levels = nn.ModuleList(ResidualBlock(i, o, d) for i, o, d in zip(ins, channels, dilations))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else self.pool(x))
            features.append(x)
        return features


class DecoderLevel(nn.Module):
    """Upsample from level ``l + 1``, concatenate the level-``l`` skip, residual block."""

    def __init__(self, deep_channels: int, channels: int, dilation: int, upsample: str) -> None:
        super().__init__()
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(deep_channels, channels, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(deep_channels, channels, 1),
            )
        self.block = ResidualBlock(2 * channels, channels, dilation)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.up(x)], dim=1))


class ResUNetDecoder(nn.Module):
    """``levels[l]`` brings features from level ``l + 1`` to level ``l``."""

    def __init__(self, channels: Sequence[int], dilations: Sequence[int], upsample: str) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            DecoderLevel(channels[lvl + 1], channels[lvl], dilations[lvl], upsample) for lvl in range(len(channels) - 1)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for lvl in range(len(self.levels) - 1, -1, -1):
            x = self.levels[lvl](x, features[lvl])
        return x


def _check_config(blocks: Any, dilations: Any, base_channels: Any, upsample: Any) -> tuple[int, list[int], int, str]:
    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not positive_int(blocks) or blocks > 6:
        raise ModelFormatError(f"resunet: blocks must be an integer from 1 to 6 (the papers use 2, 3, 4), got {blocks!r}")
    if dilations is None:
        dilations = [1] * (blocks + 1)
    if not isinstance(dilations, (list, tuple)) or not all(positive_int(d) for d in dilations):
        raise ModelFormatError(f"resunet: dilations must be a list of positive integers, got {dilations!r}")
    if len(dilations) != blocks + 1:
        raise ModelFormatError(
            f"resunet: dilations needs blocks + 1 = {blocks + 1} values (one per level, the last for the "
            f"bottleneck), got {len(dilations)}"
        )
    if not positive_int(base_channels) or base_channels > 1024:
        raise ModelFormatError(f"resunet: base_channels must be an integer from 1 to 1024, got {base_channels!r}")
    if upsample not in UPSAMPLE_MODES:
        raise ModelFormatError(f"resunet: upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
    return blocks, list(dilations), base_channels, upsample


def resunet_paths(blocks: int, dilations: Sequence[int], upsample: str = "transpose") -> list[list[Layer]]:
    """Receptive-field description of a :class:`ResUNet` along one axis: one path per depth."""
    mode = "nearest" if upsample == "transpose" else "bilinear"
    paths = []
    for depth in range(blocks + 1):
        path: list[Layer] = []
        for lvl in range(depth + 1):
            if lvl:
                path.append(Pool(2, 2))
            path += [Conv(3, 1, dilations[lvl]), Conv(3, 1, dilations[lvl])]
        for lvl in range(depth - 1, -1, -1):
            path.append(Upsample(2, mode))
            path += [Conv(3, 1, dilations[lvl]), Conv(3, 1, dilations[lvl])]
        paths.append(path)
    return paths


class ResUNet(nn.Module):
    """Residual U-Net; see the module docstring. Outputs raw values (no activation)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        blocks: int = 3,
        dilations: Sequence[int] | None = None,
        base_channels: int = 16,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        blocks, dilations, base_channels, upsample = _check_config(blocks, dilations, base_channels, upsample)
        channels = [base_channels * 2**lvl for lvl in range(blocks + 1)]
        self.encoder = ResUNetEncoder(in_channels, channels, dilations)
        self.decoder = ResUNetDecoder(channels, dilations, upsample)
        self.head = nn.Conv2d(channels[0], out_channels, 1)
        paths = resunet_paths(blocks, dilations, upsample)
        self.receptive_field = receptive_field(paths)
        self.nominal_receptive_field = nominal_receptive_field(paths)
        self.size_multiple = 2**blocks
        self.arch_name = "resunet"
        self.arch_kwargs = {"blocks": blocks, "dilations": dilations, "base_channels": base_channels, "upsample": upsample}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


# ----------------------------------------------------------------------------------------
# registry entries

_GENERIC_DEFAULTS = {"blocks": 3, "dilations": None, "base_channels": 16, "upsample": "transpose"}


@register_model(
    "resunet",
    family="resunet",
    description="residual U-Net, any depth (blocks) and per-level dilations",
    receptive_field=receptive_field(resunet_paths(3, [1, 1, 1, 1])),
    size_multiple=2**3,
    default_kwargs=_GENERIC_DEFAULTS,
)
def _resunet(in_channels: int, out_channels: int, **kwargs: Any) -> ResUNet:
    return ResUNet(in_channels, out_channels, **kwargs)


def _register_variant(blocks: int, paper_rf: int, dilations: tuple[int, ...]) -> None:
    paths = resunet_paths(blocks, dilations)
    nominal = nominal_receptive_field(paths)
    exact = receptive_field(paths)
    name = f"resunet_b{blocks}_rf{nominal}"

    def factory(in_channels: int, out_channels: int, base_channels: int, upsample: str) -> ResUNet:
        return ResUNet(in_channels, out_channels, blocks, dilations, base_channels, upsample)

    register_model(
        name,
        family="resunet",
        description=(
            f"residual U-Net, {blocks} blocks, dilations {list(dilations)}, receptive field {nominal} "
            f"by the papers' formula (Kazimi et al. 2024: {paper_rf}), {exact} exact worst case"
        ),
        receptive_field=exact,
        size_multiple=2**blocks,
        default_kwargs={"base_channels": 16, "upsample": "transpose"},
    )(factory)


for (_blocks, _rf), _dilations in PAPER_VARIANTS.items():
    _register_variant(_blocks, _rf, _dilations)
