"""Model registry, every registered architecture at tiny size, and receptive fields."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from napari_emssl.errors import ModelFormatError
from napari_emssl.models import DEFAULT_SEGMENT_ARCH, ModelInfo, create_model, list_models, model_info
from napari_emssl.models.receptive_field import (
    Conv,
    Pool,
    Upsample,
    input_interval,
    measure_input_intervals,
    nominal_receptive_field,
    path_period,
    receptive_field,
    receptive_field_reach,
)
from napari_emssl.models.resunet import PAPER_VARIANTS, resunet_paths

NAMES = [info.name for info in list_models()]

TINY = {
    "resunet": {"base_channels": 4},
    "smp_unet": {"decoder_channels": [16, 16, 8, 8, 4]},
    "hrnet": {"head_channels": 8},
    "vit": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32, "decoder_channels": [16, 8, 8, 4]},
}

PAPER_NAMES = [f"resunet_b{b}_rf{rf}" for (b, rf) in PAPER_VARIANTS]


def tiny(name: str, in_channels: int = 1, out_channels: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, in_channels, out_channels, **TINY[model_info(name).family])


def side(net: nn.Module, at_least: int = 64) -> int:
    m = net.size_multiple
    return max(m, (at_least + m - 1) // m * m)


# ---------------------------------------------------------------------------- registry


def test_list_models_content():
    infos = list_models()
    names = [i.name for i in infos]
    assert names == sorted(names)
    assert all(isinstance(i, ModelInfo) for i in infos)
    expected = set(PAPER_NAMES) | {"resunet", "unet_resnet18", "unet_resnet34", "hrnet_w18_small", "hrnet_w18_small_v2"}
    assert expected <= set(names)
    assert {i.family for i in infos} == {"resunet", "smp_unet", "hrnet", "vit"}
    assert DEFAULT_SEGMENT_ARCH == "resunet_b3_rf96" and DEFAULT_SEGMENT_ARCH in names
    for info in infos:
        assert info.receptive_field > 0 and info.size_multiple > 0 and info.description
        json.dumps(info.default_kwargs)


def test_model_info_is_frozen_and_a_copy():
    info = model_info("unet_resnet18")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "x"  # type: ignore[misc]
    info.default_kwargs["decoder_channels"] = [1]
    assert model_info("unet_resnet18").default_kwargs["decoder_channels"] == [256, 128, 64, 32, 16]


def test_unknown_name_lists_known_names():
    with pytest.raises(ModelFormatError, match="unknown model architecture 'nope'.*resunet_b3_rf96"):
        create_model("nope")
    with pytest.raises(ModelFormatError, match="unknown"):
        model_info("nope")


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("resunet_b3_rf96", {"colour": 3}, "does not accept option.*colour.*accepted: base_channels, upsample"),
        ("resunet_b3_rf96", {"blocks": 4}, "does not accept option.*blocks"),  # fixed by the variant
        ("resunet_b3_rf96", {"base_channels": 0}, "base_channels"),
        ("resunet_b3_rf96", {"base_channels": 2.5}, "base_channels"),
        ("resunet_b3_rf96", {"upsample": "cubic"}, "upsample must be one of transpose, bilinear"),
        ("resunet", {"blocks": 0}, "blocks must be"),
        ("resunet", {"blocks": 2, "dilations": [1, 1]}, r"dilations needs blocks \+ 1 = 3 values"),
        ("resunet", {"dilations": [1, 0, 1, 1]}, "dilations must be"),
        ("unet_resnet18", {"decoder_channels": [8, 8]}, "decoder_channels must be a list of 5"),
        ("hrnet_w18_small", {"head_channels": 0}, "head_channels"),
        ("hrnet_w18_small", {"refine_channels": -1}, "refine_channels"),
        ("hrnet_w18_small", {"refine_channels": 1.5}, "refine_channels"),
        ("resunet", {"dilations": object()}, "plain numbers"),
    ],
)
def test_bad_kwargs(name, kwargs, match):
    with pytest.raises(ModelFormatError, match=match):
        create_model(name, **kwargs)


@pytest.mark.parametrize("channels", [{"in_channels": 0}, {"out_channels": -1}, {"in_channels": 1.0}, {"out_channels": True}])
def test_bad_channels(channels):
    with pytest.raises(ModelFormatError, match="must be a positive integer"):
        create_model("resunet_b2_rf44", **channels)


# ---------------------------------------------------------------------------- every model


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name):
    net = tiny(name, in_channels=1, out_channels=2).train()
    s = side(net)
    x = torch.randn(2, 1, s, s)
    y = net(x)
    assert y.shape == (2, 2, s, s) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_attributes_match_registry(name):
    net = tiny(name)
    info = model_info(name)
    assert net.arch_name == name
    for attr in ("receptive_field", "size_multiple"):
        assert isinstance(getattr(net, attr), int)
    # the tiny kwargs change widths only, not the geometry
    assert net.receptive_field == info.receptive_field
    assert net.size_multiple == info.size_multiple
    assert set(net.arch_kwargs) == set(info.default_kwargs)
    assert json.loads(json.dumps(net.arch_kwargs)) == net.arch_kwargs


@pytest.mark.parametrize("name", NAMES)
def test_rebuild_from_arch_kwargs(name):
    net = tiny(name, in_channels=3, out_channels=2).eval()
    kwargs = json.loads(json.dumps(net.arch_kwargs))  # as a model directory stores them
    again = create_model(net.arch_name, 3, 2, **kwargs).eval()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in again.state_dict().items()}
    again.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, net.size_multiple * max(1, 64 // net.size_multiple), 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), again(x))


def test_parameter_names_are_readable():
    names = [n for n, _ in tiny("resunet_b2_rf44").named_parameters()]
    assert "encoder.levels.0.conv1.weight" in names
    assert "encoder.levels.2.skip.weight" in names  # level 2 is the bottleneck
    assert "decoder.levels.0.up.weight" in names
    assert "decoder.levels.1.block.bn2.weight" in names
    assert names[-2:] == ["head.weight", "head.bias"]
    hr = [n for n, _ in tiny("hrnet_w18_small").named_parameters()]
    assert hr[0].startswith("encoder.") and "head.out.weight" in hr
    assert hr[-2:] == ["refine.out.weight", "refine.out.bias"]


# ---------------------------------------------------------------------------- HRNet refinement


def test_hrnet_refinement_starts_neutral_and_old_states_load_unchanged():
    """A new network outputs its coarse (stride-4) head; a state saved without the branch loads strictly."""
    old = create_model("hrnet_w18_small", 1, 2, head_channels=8, refine_channels=0).eval()
    assert not any(k.startswith("refine.") for k in old.state_dict())
    torch.manual_seed(1)
    new = create_model("hrnet_w18_small", 1, 2, head_channels=8).eval()
    new.load_state_dict(old.state_dict(), strict=True)  # missing refine.* filled in, output-neutral
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        old.load_state_dict(new.state_dict())  # the other way round is not silently dropped


def test_hrnet_restores_single_pixel_detail():
    """Fitting the identity: the coarse head cannot hold 1-pixel noise, the refinement can."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 64)
    errors = {}
    for refine in (0, 8):
        torch.manual_seed(0)
        net = create_model("hrnet_w18_small", 1, 1, head_channels=8, refine_channels=refine)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(40):
            opt.zero_grad()
            loss = (net(x) - x).pow(2).mean()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            errors[refine] = (net(x) - x).pow(2).mean().item()
    assert errors[0] > 0.5  # white noise varies pixel to pixel: most of it is lost at stride 4
    assert errors[8] < 0.5 * errors[0]  # measured: 0.26 against 1.00


def test_resunet_widths_and_default():
    net = create_model(DEFAULT_SEGMENT_ARCH)
    assert net.arch_kwargs == {"base_channels": 16, "upsample": "transpose"}
    assert [lvl.conv1.out_channels for lvl in net.encoder.levels] == [16, 32, 64, 128]
    assert net.size_multiple == 8


# ---------------------------------------------------------------------------- receptive fields


def test_calculator_on_plain_chains():
    assert nominal_receptive_field([[Conv(3), Conv(3)]]) == receptive_field([[Conv(3), Conv(3)]]) == 5
    assert receptive_field([[Conv(3, dilation=4)]]) == 9
    # VGG-like: conv, conv, pool, conv, conv -> 1 + 2 + 2 + 1 + 4 + 4
    vgg = [Conv(3), Conv(3), Pool(2, 2), Conv(3), Conv(3)]
    assert nominal_receptive_field([vgg]) == receptive_field([vgg]) == 14
    assert path_period([vgg]) == 2
    # strided 7x7 stem + 3x3 max pool of a ResNet: 7 + 2 * 2
    assert receptive_field([[Conv(7, 2, padding=3), Pool(3, 2, 1)]]) == 11
    assert receptive_field_reach([[Conv(5)]]) == (2, 2)
    # nearest upsampling then 3x3: output pixels see 2 or 3 input pixels (position-dependent)
    up = [[Upsample(2, "nearest"), Conv(3)]]
    assert {input_interval(up, x)[1] - input_interval(up, x)[0] + 1 for x in range(4)} == {2}


@pytest.mark.parametrize(("blocks", "paper_rf"), list(PAPER_VARIANTS))
def test_paper_variants(blocks, paper_rf):
    """The papers' formula gives the papers' numbers; the exact field is what is reported."""
    name = f"resunet_b{blocks}_rf{paper_rf}"
    paths = resunet_paths(blocks, PAPER_VARIANTS[(blocks, paper_rf)])
    assert nominal_receptive_field(paths) == paper_rf
    info = model_info(name)
    assert info.receptive_field == receptive_field(paths)
    assert abs(info.receptive_field - paper_rf) <= 4
    if blocks == 2:
        assert info.receptive_field == paper_rf


@pytest.mark.parametrize(
    ("blocks", "dilations", "upsample"),
    [
        (1, [1, 1], "transpose"),
        (2, [1, 1, 1], "transpose"),
        (2, [2, 3, 3], "bilinear"),
        (3, [1, 1, 1, 1], "transpose"),
        (3, [1, 2, 2, 2], "bilinear"),
        (4, [1, 1, 1, 1, 1], "transpose"),
    ],
)
def test_calculator_matches_gradients(blocks, dilations, upsample):
    """Brute force: input rows whose gradient w.r.t. one output pixel is non-zero, every
    output position of one stride period, against the calculator."""
    net = create_model("resunet", blocks=blocks, dilations=dilations, base_channels=2, upsample=upsample)
    paths = resunet_paths(blocks, dilations, upsample)
    period = 2**blocks
    assert path_period(paths) == period
    length = (2 * net.receptive_field + 64) // period * period
    start = length // 2 // period * period
    positions = list(range(start, start + period))
    measured = measure_input_intervals(net, 1, positions, length, width=period, batch=period)
    assert measured == [input_interval(paths, p) for p in positions]
    assert max(hi - lo + 1 for lo, hi in measured) == net.receptive_field
    left, right = receptive_field_reach(paths)
    assert max(p - lo for p, (lo, _) in zip(positions, measured)) == left
    assert max(hi - p for p, (_, hi) in zip(positions, measured)) == right


def test_field_is_square_in_2d():
    net = create_model("resunet", blocks=2, dilations=[1, 2, 1], base_channels=2).double().eval()
    with torch.no_grad():  # positive weights, no bias: no ReLU hides a pixel
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.copy_(m.weight.abs() + 0.01)
                if m.bias is not None:
                    m.bias.zero_()
    net.encoder.pool = nn.AvgPool2d(2)  # a max pool passes gradient to one pixel per window
    x = torch.rand(1, 1, 96, 96, dtype=torch.float64, requires_grad=True)
    net(x)[0, :, 48, 48].sum().backward()
    support = torch.nonzero(x.grad[0, 0] != 0)
    lo, hi = input_interval(resunet_paths(2, [1, 2, 1]), 48)
    assert support[:, 0].min() == support[:, 1].min() == lo
    assert support[:, 0].max() == support[:, 1].max() == hi
    assert len(support) == (hi - lo + 1) ** 2


@pytest.mark.parametrize("name", ["unet_resnet18", "hrnet_w18_small"])
def test_cached_fields_of_big_models(name):
    """One measured position lies within the cached worst case (and close to it)."""
    net = tiny(name, out_channels=1)
    if getattr(net, "refine", None) is not None:
        nn.init.normal_(net.refine.out.weight)  # starts at zero: no gradient would pass through the refinement
    length = 768
    ((lo, hi),) = measure_input_intervals(net, 1, [length // 2], length, width=32)
    assert 0 < lo and hi < length - 1  # not clipped by the border
    assert net.receptive_field - 32 <= hi - lo + 1 <= net.receptive_field


def test_import_does_not_load_timm_or_smp():
    """timm and smp are slow to import: only building one of their models loads them."""
    import subprocess
    import sys

    code = (
        "import sys, napari_emssl.models as m; m.list_models(); m.model_info('hrnet_w18_small'); "
        "m.create_model('resunet_b2_rf44', base_channels=2); "
        "assert not {'timm', 'segmentation_models_pytorch'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
