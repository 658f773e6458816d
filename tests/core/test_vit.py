"""The ViT segmentation architecture (timm encoder + UNETR-like decoder)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_emssl.errors import ModelFormatError
from napari_emssl.models import create_model, model_info
from napari_emssl.models.vit import VIT_RECEPTIVE_FIELD, feature_blocks

TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32, "decoder_channels": [16, 8, 8, 4]}


def tiny_vit(out_channels: int = 2, **changes) -> nn.Module:
    torch.manual_seed(0)
    return create_model("vit_tiny_p16", 1, out_channels, **{**TINY_VIT, **changes})


def test_registry_entries():
    for name, (dim, depth, heads) in {"vit_tiny_p16": (192, 12, 3), "vit_small_p16": (384, 12, 6)}.items():
        info = model_info(name)
        assert info.family == "vit" and info.size_multiple == 16
        assert info.receptive_field == VIT_RECEPTIVE_FIELD == 128
        kw = info.default_kwargs
        assert (kw["embed_dim"], kw["depth"], kw["num_heads"], kw["img_size"]) == (dim, depth, heads, 256)


def test_default_tiny_is_the_paper_size():
    net = create_model("vit_tiny_p16")
    enc = net.encoder
    assert enc.embed_dim == 192 and len(enc.blocks) == 12 and enc.blocks[0].attn.num_heads == 3
    assert enc.patch_embed.patch_size == (16, 16) and enc.patch_embed.proj.in_channels == 1
    assert enc.cls_token is None and enc.num_prefix_tokens == 0  # no class-token-dependent head
    assert isinstance(enc.head, nn.Identity)
    assert enc.pos_embed.shape == (1, 16 * 16, 192)  # img_size 256 / 16
    assert net.feature_blocks == [2, 5, 8, 11]
    encoder_params = sum(p.numel() for p in enc.parameters())
    assert 5.0e6 < encoder_params < 6.0e6  # ViT-Ti/16 without a head: ~5.5 M


def test_feature_blocks_are_evenly_spaced():
    assert feature_blocks(12) == [2, 5, 8, 11]
    assert feature_blocks(8) == [1, 3, 5, 7]
    assert feature_blocks(2) == [0, 0, 0, 1]
    assert feature_blocks(1) == [0, 0, 0, 0]


@pytest.mark.parametrize("shape", [(32, 32), (48, 80), (64, 16)])
def test_any_multiple_of_16(shape):
    """dynamic_img_size: the position embedding (grid 2 x 2 here) is interpolated to any grid."""
    net = tiny_vit().eval()
    x = torch.randn(1, 1, *shape)
    with torch.no_grad():
        y = net(x)
        maps = net.token_maps(x)
    assert y.shape == (1, 2, *shape) and torch.isfinite(y).all()
    assert [m.shape for m in maps] == [(1, 32, shape[0] // 16, shape[1] // 16)] * 4


def test_attention_is_global_within_a_tile():
    """A pixel far beyond any CNN's reach changes the output: the field is the whole tile."""
    net = tiny_vit().eval()
    x = torch.rand(1, 1, 64, 64)
    y0 = net(x)
    x2 = x.clone()
    x2[0, 0, 60:, 60:] += 1.0
    y1 = net(x2)
    assert (y1 - y0)[0, :, :8, :8].abs().max() > 0


def test_autocast_bfloat16_cpu():
    net = tiny_vit()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.rand(2, 1, 32, 32))
    assert y.shape == (2, 2, 32, 32) and torch.isfinite(y.float()).all()


def test_parameter_names():
    names = [n for n, _ in tiny_vit().named_parameters()]
    assert "encoder.pos_embed" in names and "encoder.patch_embed.proj.weight" in names
    assert "encoder.blocks.1.attn.qkv.weight" in names and "encoder.norm.weight" in names
    assert any(n.startswith("decoder.") for n in names) and any(n.startswith("stem.") for n in names)
    assert names[-2:] == ["head.weight", "head.bias"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"embed_dim": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"img_size": 40}, "img_size must be a multiple of 16"),
        ({"decoder_channels": [8, 8]}, "decoder_channels must be a list of 4"),
        ({"depth": 0}, "depth must be a positive integer"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"patch_size": 8}, "does not accept option"),
    ],
)
def test_bad_kwargs(kwargs, match):
    with pytest.raises(ModelFormatError, match=match):
        create_model("vit_tiny_p16", **{**TINY_VIT, **kwargs})
