"""HRNet (timm, random initialisation) with an HRNetV2-style head and a full-resolution refinement.

The timm backbone (``features_only=True``, ``feature_location=""``, ``out_indices=(1, 2, 3, 4)``)
returns the four branch outputs at strides 4, 8, 16, 32 (not the stem); the head upsamples the four
branches to the stride-4 one (bilinear), concatenates them, applies 1x1 conv + BN + ReLU
and a 1x1 conv to ``out_channels``, and upsamples bilinearly to the input size (Wang et al.,
"Deep High-Resolution Representation Learning", 2020; Kazimi et al. 2024 fine-tuned it best).

That coarse output holds no detail finer than its stride of 4 pixels: enough for
segmentation masks, not for restoring an image (denoised atom columns a few pixels wide
came out blurred, more than 10 dB below a U-Net). The ``refine`` branch therefore runs at full
resolution on the input concatenated with the coarse output (three 3x3 convolutions of
``refine_channels``, ReLU) and adds its result to the coarse output. Its last convolution starts
at zero, so a new network's output, and that of a model saved before the branch existed
(its missing ``refine.*`` tensors are filled in when it is loaded), is exactly the coarse one.
``refine_channels=0`` leaves the branch out.

``size_multiple`` is 32: the fuse layers add nearest-upsampled coarse branches to fine
ones, which fails unless H and W are multiples of 32 (checked: 80 and 48 fail, 64 and 96 work).
The receptive field is measured once by gradients, as for the smp U-Nets (4096 x 32 input,
32 positions, widest kept; narrowest 551 and 1071), and cached here; the tests re-measure
one position of ``hrnet_w18_small``. The refinement's 3-pixel reach does not widen it (measured
with and without: 583 and 1103 both times), as the widest support comes from the coarse branches.

Parameter names: ``encoder.*`` (timm's names), ``head.conv``, ``head.bn``, ``head.out`` and
``refine.conv1``, ``refine.conv2``, ``refine.out``.
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
DEFAULT_REFINE_CHANNELS = 16


class HRNetSeg(nn.Module):
    """timm HRNet backbone + concatenate-all-branches head + full-resolution refinement; raw outputs."""

    def __init__(self, backbone: str, in_channels: int = 1, out_channels: int = 1, head_channels: int | None = None,
                 refine_channels: int = DEFAULT_REFINE_CHANNELS):
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
        self.refine = None
        if refine_channels:
            self.refine = nn.Sequential(OrderedDict(
                conv1=nn.Conv2d(in_channels + out_channels, refine_channels, 3, padding=1),
                act1=nn.ReLU(inplace=True),
                conv2=nn.Conv2d(refine_channels, refine_channels, 3, padding=1),
                act2=nn.ReLU(inplace=True),
                out=nn.Conv2d(refine_channels, out_channels, 3, padding=1),
            ))
            nn.init.zeros_(self.refine.out.weight)
            nn.init.zeros_(self.refine.out.bias)
            self._register_load_state_dict_pre_hook(self._fill_missing_refine)
        self.receptive_field = HRNET_RECEPTIVE_FIELDS.get(backbone, 0)
        self.size_multiple = 32

    def output_layers(self) -> list[nn.Conv2d]:
        """The convolutions whose outputs are summed into the result (zeroed: the network outputs 0)."""
        return [self.head.out] + ([self.refine.out] if self.refine is not None else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        size = features[0].shape[-2:]
        fused = torch.cat(
            [features[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]],
            dim=1,
        )
        coarse = F.interpolate(self.head(fused), size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.refine is None:
            return coarse
        return coarse + self.refine(torch.cat([x, coarse], dim=1))

    def _fill_missing_refine(self, state_dict, prefix, *_args) -> None:
        """A state saved without the refinement branch gets this network's (output-neutral) one."""
        own = f"{prefix}refine."
        if f"{prefix}head.out.weight" not in state_dict or any(k.startswith(own) for k in state_dict):
            return
        for name, value in self.refine.state_dict().items():
            tensor = torch.zeros_like(value) if name.startswith("out.") else value.detach().clone()
            state_dict[own + name] = tensor


def _register(backbone: str, description: str) -> None:
    def factory(in_channels: int, out_channels: int, head_channels: Any, refine_channels: Any) -> HRNetSeg:
        if head_channels is not None and (
            isinstance(head_channels, bool) or not isinstance(head_channels, int) or head_channels < 1
        ):
            raise ModelFormatError(f"head_channels must be a positive integer or null, got {head_channels!r}")
        if isinstance(refine_channels, bool) or not isinstance(refine_channels, int) or refine_channels < 0:
            raise ModelFormatError(f"refine_channels must be a non-negative integer (0: none), got {refine_channels!r}")
        return HRNetSeg(backbone, in_channels, out_channels, head_channels, refine_channels)

    register_model(
        backbone,
        family="hrnet",
        description=description,
        receptive_field=HRNET_RECEPTIVE_FIELDS[backbone],
        size_multiple=32,
        default_kwargs={"head_channels": None, "refine_channels": DEFAULT_REFINE_CHANNELS},
    )(factory)


_register("hrnet_w18_small", "HRNet-W18-small (timm; branches 16/32/64/128), HRNetV2 head, full-resolution refinement")
_register("hrnet_w18_small_v2", "HRNet-W18-small-v2 (timm; branches 18/36/72/144), HRNetV2 head, full-resolution refinement")
