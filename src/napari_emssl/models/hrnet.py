"""HRNet (timm, random initialisation) with an HRNetV2-style segmentation head.

The timm backbone (``features_only=True``, ``feature_location=""``, ``out_indices=(1, 2, 3, 4)``)
returns the four branch outputs at strides 4, 8, 16, 32 (not the stem); the head upsamples the four
branches to the stride-4 one (bilinear), concatenates them, applies 1x1 conv + BN + ReLU
and a 1x1 conv to ``out_channels``, and upsamples bilinearly to the input size (Wang et al.,
"Deep High-Resolution Representation Learning", 2020; Kazimi et al. 2024 fine-tuned it best).

``size_multiple`` is 32: the fuse layers add nearest-upsampled coarse branches to fine
ones, which fails unless H and W are multiples of 32 (checked: 80 and 48 fail, 64 and 96 work).
The receptive field is measured once by gradients, as for the smp U-Nets (4096 x 32 input,
32 positions, widest kept; narrowest 551 and 1071), and cached here; the tests re-measure
one position of ``hrnet_w18_small``.

Parameter names: ``encoder.*`` (timm's names) and ``head.conv``, ``head.bn``, ``head.out``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelFormatError
from .registry import register_model

__all__ = ["HRNetSeg", "HRNET_RECEPTIVE_FIELDS"]

# measured once (see module docstring); keyed by timm model name
HRNET_RECEPTIVE_FIELDS = {"hrnet_w18_small": 583, "hrnet_w18_small_v2": 1103}


class HRNetSeg(nn.Module):
    """timm HRNet backbone + concatenate-all-branches head; raw outputs at input resolution."""

    def __init__(self, backbone: str, in_channels: int = 1, out_channels: int = 1, head_channels: int | None = None):
        super().__init__()
        import timm  # slow import: only when building

        self.encoder = timm.create_model(
            backbone, pretrained=False, features_only=True, in_chans=in_channels,
            feature_location="", out_indices=(1, 2, 3, 4),
        )
        branch_channels = sum(self.encoder.feature_info.channels())
        head_channels = branch_channels if head_channels is None else head_channels
        self.head = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(branch_channels, head_channels, 1, bias=False),
            bn=nn.BatchNorm2d(head_channels),
            act=nn.ReLU(inplace=True),
            out=nn.Conv2d(head_channels, out_channels, 1),
        ))
        self.receptive_field = HRNET_RECEPTIVE_FIELDS.get(backbone, 0)
        self.size_multiple = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        size = features[0].shape[-2:]
        fused = torch.cat(
            [features[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]],
            dim=1,
        )
        return F.interpolate(self.head(fused), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _register(backbone: str, description: str) -> None:
    def factory(in_channels: int, out_channels: int, head_channels: Any) -> HRNetSeg:
        if head_channels is not None and (
            isinstance(head_channels, bool) or not isinstance(head_channels, int) or head_channels < 1
        ):
            raise ModelFormatError(f"head_channels must be a positive integer or null, got {head_channels!r}")
        return HRNetSeg(backbone, in_channels, out_channels, head_channels)

    register_model(
        backbone,
        family="hrnet",
        description=description,
        receptive_field=HRNET_RECEPTIVE_FIELDS[backbone],
        size_multiple=32,
        default_kwargs={"head_channels": None},
    )(factory)


_register("hrnet_w18_small", "HRNet-W18-small (timm; branches 16/32/64/128) with a segmentation head")
_register("hrnet_w18_small_v2", "HRNet-W18-small-v2 (timm; branches 18/36/72/144) with a segmentation head")
