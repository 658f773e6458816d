"""Vision Transformer (timm, random initialisation) with a UNETR-like dense decoder.

The encoder is a plain timm ``VisionTransformer`` (Dosovitskiy et al. 2021): 16 x 16 patches,
one input channel, no class token and no classification head (``num_classes=0``), and
``dynamic_img_size=True`` so that any ``H`` and ``W`` that are multiples of 16 work (timm
interpolates the learned position embedding, whose grid is ``img_size / 16``). This is the
backbone the masked-image-modelling (MAE, He et al. 2022; MFF, Liu et al. 2023) and
contrastive (MoCo v3, Chen et al. 2021) pretext methods train.

The dense decoder follows UNETR (Hatamizadeh et al. 2022) in spirit: the token features of
four evenly spaced blocks (for depth 12: blocks 3, 6, 9, 12) are reshaped to
``(B, C, H/16, W/16)``; the deepest (after the encoder's final norm) is upsampled x2 four
times, each time concatenated with a skip: the blocks 9, 6 and 3 brought to strides 8, 4
and 2 by 2 x 2 transposed convolutions, and a shallow full-resolution convolution stem on
the input image for fine detail. Every merge is two 3 x 3 conv + BN + ReLU; a 1 x 1 ``head``
gives ``out_channels`` raw outputs.

Receptive field: self-attention is global *within a tile*, so the field is the whole input.
For tiled prediction ``receptive_field`` only sets the tile overlap (``rf // 2 + 1``); we
declare 128 px, i.e. every predicted pixel sees at least ~64-80 px of context on each side
(overlap 65 rounded up to 80 with the 16 px size multiple, default tile 256 = the default
``img_size`` the position embedding was trained for). Larger values only cost more tiles.

Parameter names: ``encoder.*`` (timm's names: ``patch_embed``, ``pos_embed``, ``blocks``,
``norm``), ``decoder.*``, ``stem.*`` and ``head.*``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ModelFormatError
from .registry import register_model

__all__ = ["ViTSeg", "VIT_RECEPTIVE_FIELD", "VIT_VARIANTS", "feature_blocks", "vit_tokens"]

#: declared receptive field (see the module docstring): sets the tiling overlap only
VIT_RECEPTIVE_FIELD = 128
PATCH = 16

#: registry name -> (embed_dim, depth, num_heads)
VIT_VARIANTS: dict[str, tuple[int, int, int]] = {
    "vit_tiny_p16": (192, 12, 3),
    "vit_small_p16": (384, 12, 6),
}

DEFAULT_DECODER_CHANNELS = [128, 64, 32, 16]


def feature_blocks(depth: int, count: int = 4) -> list[int]:
    """Indices of ``count`` evenly spaced blocks, the last one included (12 -> 2, 5, 8, 11)."""
    return [max(0, (i + 1) * depth // count - 1) for i in range(count)]


def vit_tokens(encoder: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch-embed ``x`` and add the (resampled) position embedding: ``(B, N, C)`` and the grid ``(h, w)``."""
    tokens = encoder.patch_embed(x)  # (B, h, w, C) with dynamic_img_size
    grid = (int(tokens.shape[1]), int(tokens.shape[2]))
    tokens = encoder._pos_embed(tokens)  # (B, h*w, C); no prefix tokens
    tokens = encoder.norm_pre(encoder.patch_drop(tokens))
    return tokens, grid


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _Merge(nn.Module):
    """Upsample ``x`` by 2 (transposed conv), concatenate the skip, two conv-BN-ReLU."""

    def __init__(self, deep: int, skip: int, out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(deep, out, 2, stride=2)
        self.block = nn.Sequential(*_conv_bn_relu(out + skip, out), *_conv_bn_relu(out, out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class _TokenSkip(nn.Module):
    """Token map at stride 16 -> stride ``16 / 2**ups`` by 1x1 conv then ``ups`` transposed convs."""

    def __init__(self, embed_dim: int, out: int, ups: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(embed_dim, out, 1)]
        for _ in range(ups):
            layers += [nn.ConvTranspose2d(out, out, 2, stride=2), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        self.path = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.path(x)


class ViTDecoder(nn.Module):
    """UNETR-like path from four token maps (shallow..deep, stride 16) and the stem to full resolution."""

    def __init__(self, embed_dim: int, channels: Sequence[int]) -> None:
        super().__init__()
        c8, c4, c2, c1 = channels
        self.bottleneck = nn.Sequential(*_conv_bn_relu(embed_dim, c8))
        self.skips = nn.ModuleList([_TokenSkip(embed_dim, c8, 1), _TokenSkip(embed_dim, c4, 2), _TokenSkip(embed_dim, c2, 3)])
        self.merges = nn.ModuleList([_Merge(c8, c8, c8), _Merge(c8, c4, c4), _Merge(c4, c2, c2), _Merge(c2, c1, c1)])

    def forward(self, maps: Sequence[torch.Tensor], stem: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(maps[3])
        skips = [self.skips[0](maps[2]), self.skips[1](maps[1]), self.skips[2](maps[0]), stem]
        for merge, skip in zip(self.merges, skips):
            x = merge(x, skip)
        return x


class ViTSeg(nn.Module):
    """timm ViT encoder + UNETR-like decoder; raw outputs at input resolution."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        img_size: int = 256,
        decoder_channels: Sequence[int] = tuple(DEFAULT_DECODER_CHANNELS),
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        import timm  # slow import: only when building

        self.encoder = timm.models.vision_transformer.VisionTransformer(
            img_size=img_size, patch_size=PATCH, in_chans=in_channels, num_classes=0, global_pool="avg",
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, class_token=False, fc_norm=False,
            dynamic_img_size=True, drop_path_rate=drop_path_rate,
        )
        self.feature_blocks = feature_blocks(depth)
        c1 = decoder_channels[-1]
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, c1), *_conv_bn_relu(c1, c1))
        self.decoder = ViTDecoder(embed_dim, decoder_channels)
        self.head = nn.Conv2d(c1, out_channels, 1)
        self.receptive_field = VIT_RECEPTIVE_FIELD
        self.size_multiple = PATCH
        self.embed_dim = embed_dim
        self.preferred_tile = int(img_size)  # prediction's tile when none is asked for (the trained token grid)

    def token_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Token features of the four ``feature_blocks`` as ``(B, C, H/16, W/16)`` (the last one normed)."""
        tokens, (h, w) = vit_tokens(self.encoder, x)
        wanted = set(self.feature_blocks)
        kept: dict[int, torch.Tensor] = {}
        last = len(self.encoder.blocks) - 1
        for i, block in enumerate(self.encoder.blocks):
            tokens = block(tokens)
            if i in wanted:
                kept[i] = self.encoder.norm(tokens) if i == last else tokens
        b, _, c = tokens.shape
        return [kept[i].transpose(1, 2).reshape(b, c, h, w) for i in self.feature_blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.token_maps(x), self.stem(x)))


# ----------------------------------------------------------------------------------------
# registry entries


def _positive_int(label: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelFormatError(f"vit: {label} must be a positive integer, got {value!r}")
    return value


def _register(name: str, embed_dim: int, depth: int, num_heads: int) -> None:
    defaults = {
        "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, "img_size": 256,
        "decoder_channels": DEFAULT_DECODER_CHANNELS, "drop_path_rate": 0.0,
    }

    def factory(in_channels: int, out_channels: int, embed_dim: Any, depth: Any, num_heads: Any, img_size: Any,
                decoder_channels: Any, drop_path_rate: Any) -> ViTSeg:
        for label, value in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads), ("img_size", img_size)):
            _positive_int(label, value)
        if embed_dim % num_heads:
            raise ModelFormatError(f"vit: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if img_size % PATCH:
            raise ModelFormatError(f"vit: img_size must be a multiple of {PATCH}, got {img_size}")
        if not isinstance(decoder_channels, (list, tuple)) or len(decoder_channels) != 4 or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in decoder_channels
        ):
            raise ModelFormatError(f"vit: decoder_channels must be a list of 4 positive integers, got {decoder_channels!r}")
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) or not 0 <= drop_path_rate < 1:
            raise ModelFormatError(f"vit: drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}")
        return ViTSeg(in_channels, out_channels, embed_dim, depth, num_heads, img_size, decoder_channels,
                      float(drop_path_rate))

    register_model(
        name,
        family="vit",
        description=(
            f"ViT (timm; embed {embed_dim}, depth {depth}, heads {num_heads}, patch 16) with a UNETR-like "
            f"decoder; attention is global within a tile, {VIT_RECEPTIVE_FIELD} px declared for tiling"
        ),
        receptive_field=VIT_RECEPTIVE_FIELD,
        size_multiple=PATCH,
        default_kwargs=defaults,
    )(factory)


for _name, (_dim, _depth, _heads) in VIT_VARIANTS.items():
    _register(_name, _dim, _depth, _heads)
