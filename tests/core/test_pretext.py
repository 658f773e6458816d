"""The self-supervised pretext methods (gan, mae, mff, mocov3) on tiny networks, CPU only."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from napari_emssl.engine.transfer import load_matching
from napari_emssl.errors import InputError
from napari_emssl.models import create_model, list_models
from napari_emssl.pretext import PRETEXT_METHODS, create_pretext, default_arch, supported_archs
from napari_emssl.pretext.corrupt import corrupt, gaussian_blur
from napari_emssl.pretext.masking import patchify, pixel_mask, random_masking, unpatchify
from napari_emssl.pretext.mff import default_fusion_layers
from napari_emssl.pretext.mocov3 import momentum_at
from napari_emssl.pretext.views import ViewSettings, make_view

RES = ("resunet_b2_rf44", {"base_channels": 4})
HRNET = ("hrnet_w18_small", {"head_channels": 8})
SMP = ("unet_resnet18", {"decoder_channels": [16, 16, 8, 8, 4]})
VIT = ("vit_tiny_p16", {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32, "decoder_channels": [16, 8, 8, 4]})
MAE_OPTS = {"decoder_dim": 32, "decoder_heads": 2, "decoder_depth": 1}
# milder views and a faster key encoder, so that 8 images are told apart within a few steps
MOCO_OPTS = {"proj_hidden": 64, "proj_dim": 32, "crop_scale": (0.8, 1.0), "jitter": 0.25, "momentum": 0.9}


def smooth_batch(n: int = 4, side: int = 32, seed: int = 0) -> torch.Tensor:
    """Fixed smooth random structure in 0..1 (bicubic upsampling of a coarse random grid)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, side // 8, side // 8, generator=g)
    return F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)


def make(method: str, arch_and_kwargs, seed: int = 0, **options):
    torch.manual_seed(seed)
    arch, kwargs = arch_and_kwargs
    return create_pretext(method, arch, kwargs, **options).train()


def optimisers(pretext) -> dict[str, torch.optim.Optimizer]:
    groups, settings = pretext.optimiser_groups(), pretext.optimiser_settings()
    assert set(groups) == set(settings) == set(pretext.phases)
    return {phase: torch.optim.AdamW(groups[phase], **settings[phase]) for phase in pretext.phases}


def train(pretext, batch: torch.Tensor, steps: int) -> list[dict[str, float]]:
    """The pretraining loop's contract: per phase zero, forward, backward, step; then after_step."""
    opts = optimisers(pretext)
    history = []
    for step in range(steps):
        record = {}
        for phase in pretext.phases:
            opts[phase].zero_grad(set_to_none=True)
            out = pretext(batch, phase)
            assert out["loss"].dim() == 0 and out["loss"].dtype == torch.float32
            out["loss"].backward()
            opts[phase].step()
            record.update({f"{phase}.{k}": float(v.detach()) for k, v in out.items()})
        pretext.after_step(step, steps)
        history.append(record)
    return history


def seeded_loss(pretext, batch: torch.Tensor, phase: str, key: str) -> float:
    """The loss on the same random corruption / mask / views every time (RNG seeded, state restored)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    try:
        with torch.no_grad():
            return float(pretext(batch, phase)[key])
    finally:
        torch.random.set_rng_state(state)


def downstream(pretext, out_channels: int = 3):
    torch.manual_seed(99)
    return create_model(pretext.arch, 1, out_channels, **pretext.arch_kwargs)


# ---------------------------------------------------------------------------- factory


def test_methods_and_defaults():
    assert PRETEXT_METHODS == ("gan", "mae", "mocov3", "mff")
    assert default_arch("gan") == "resunet_b3_rf96"
    assert {default_arch(m) for m in ("mae", "mff", "mocov3")} == {"vit_tiny_p16"}
    names = {i.name: i.family for i in list_models()}
    cnn = {n for n, f in names.items() if f in ("resunet", "hrnet", "smp_unet")}
    vit = {n for n, f in names.items() if f == "vit"}
    assert set(supported_archs("gan")) == cnn and "resunet" in cnn and "unet_resnet34" in cnn
    assert set(supported_archs("mae")) == set(supported_archs("mocov3")) == cnn | vit
    assert set(supported_archs("mff")) == vit
    for method in PRETEXT_METHODS:
        assert default_arch(method) in supported_archs(method)


@pytest.mark.parametrize(
    "method, arch, options, match",
    [
        ("simclr", None, {}, "unknown pretext method 'simclr'; choose one of: gan, mae, mocov3, mff"),
        ("mff", "resunet_b2_rf44", {}, "cannot use architecture 'resunet_b2_rf44'; choose one of: vit_"),
        ("gan", "vit_tiny_p16", {}, "cannot use architecture 'vit_tiny_p16'; choose one of: hrnet_w18_small"),
        ("mae", "no_such_net", {}, "cannot use architecture 'no_such_net'"),
        ("gan", "resunet_b2_rf44", {"mask_ratio": 0.5}, "does not accept option.*mask_ratio.*accepted:.*l1_weight"),
        ("mae", "resunet_b2_rf44", {"mask_ratio": 1.5}, "mask_ratio must be a number between 0"),
        ("mocov3", "resunet_b2_rf44", {"temperature": 0}, "temperature must be a positive"),
    ],
)
def test_bad_requests_raise_input_error(method, arch, options, match):
    with pytest.raises(InputError, match=match):
        create_pretext(method, arch, {"base_channels": 4} if arch == "resunet_b2_rf44" else None, **options)


def test_error_messages_are_one_line():
    for method, arch in (("nope", None), ("mff", "hrnet_w18_small")):
        with pytest.raises(InputError) as info:
            create_pretext(method, arch)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- training


# (method, arch, batch side, options, phase and key whose seeded value must fall, steps, required drop)
TRAIN_CASES = [
    pytest.param("gan", RES, 32, {}, ("g", "l1"), 20, 0.1, id="gan-resunet"),
    pytest.param("gan", HRNET, 64, {"lr": 1e-3}, ("g", "l1"), 12, 0.1, id="gan-hrnet"),
    pytest.param("mae", VIT, 32, {**MAE_OPTS, "lr": 1e-3}, ("main", "loss"), 20, 0.1, id="mae-vit"),
    pytest.param("mae", RES, 32, {"lr": 1e-3}, ("main", "loss"), 20, 0.3, id="mae-resunet"),
    pytest.param("mff", VIT, 32, {**MAE_OPTS, "lr": 1e-3}, ("main", "loss"), 20, 0.1, id="mff-vit"),
    pytest.param("mocov3", VIT, 32, {**MOCO_OPTS, "lr": 3e-3}, ("main", "loss"), 30, 0.1, id="mocov3-vit"),
    pytest.param("mocov3", RES, 32, {**MOCO_OPTS, "lr": 3e-3}, ("main", "loss"), 30, 0.1, id="mocov3-resunet"),
]


@pytest.mark.parametrize("method, arch, side, options, watched, steps, drop", TRAIN_CASES)
def test_loss_falls(method, arch, side, options, watched, steps, drop):
    pretext = make(method, arch, **options)
    assert pretext.method == method
    batch = smooth_batch(8 if method == "mocov3" else 4, side)
    phase, key = watched
    before = seeded_loss(pretext, batch, phase, key)
    history = train(pretext, batch, steps)
    after = seeded_loss(pretext, batch, phase, key)
    assert all(math.isfinite(v) for record in history for v in record.values())
    assert after < before * (1 - drop), f"{method}: {phase}.{key} {before:.4f} -> {after:.4f}"
    # the logged training values fall too (first three steps against the last three)
    name = f"{phase}.{key}"
    first = sum(r[name] for r in history[:3]) / 3
    last = sum(r[name] for r in history[-3:]) / 3
    assert last < first


def test_gan_smp_unet_and_hrnet_v2_build_and_step():
    for arch in (SMP, ("hrnet_w18_small_v2", {"head_channels": 8})):
        pretext = make("gan", arch, disc_channels=8)
        history = train(pretext, smooth_batch(2, 64), 1)
        assert {"d.loss", "d.d_real", "d.d_fake", "g.loss", "g.adv", "g.l1"} <= set(history[0])


def test_gan_losses_and_settings():
    pretext = make("gan", RES)
    assert pretext.phases == ("d", "g")
    settings = pretext.optimiser_settings()
    for phase in ("d", "g"):
        assert settings[phase] == {"lr": 2e-4, "betas": (0.5, 0.999), "weight_decay": 0.0}
    groups = pretext.optimiser_groups()
    assert {id(p) for p in groups["d"]} == {id(p) for p in pretext.discriminator.parameters()}
    assert {id(p) for p in groups["g"]} == {id(p) for p in pretext.generator.parameters()}
    assert pretext.l1_weight == 100.0
    assert pretext.discriminator.net[0].out_channels == 32  # disc_channels default
    batch = smooth_batch(2, 32)
    torch.manual_seed(0)
    out = pretext(batch, "g")
    torch.testing.assert_close(out["loss"], out["adv"] + 100.0 * out["l1"])
    out = pretext(batch, "d")
    torch.testing.assert_close(out["loss"], 0.5 * (out["d_real"] + out["d_fake"]))
    with pytest.raises(InputError, match="at least 32 pixels"):
        pretext(smooth_batch(2, 16), "g")


def test_gan_phase_d_trains_only_the_discriminator():
    pretext = make("gan", RES)
    pretext(smooth_batch(2, 32), "d")["loss"].backward()
    assert all(p.grad is None for p in pretext.generator.parameters())
    assert all(p.grad is not None for p in pretext.discriminator.parameters())


# ---------------------------------------------------------------------------- transfer


@pytest.mark.parametrize(
    "method, arch, options",
    [
        ("gan", RES, {}),
        ("gan", HRNET, {}),
        ("mae", VIT, MAE_OPTS),
        ("mae", RES, {}),
        ("mae", HRNET, {}),
        ("mff", VIT, MAE_OPTS),
        ("mocov3", VIT, MOCO_OPTS),
        ("mocov3", RES, MOCO_OPTS),
        ("mocov3", SMP, MOCO_OPTS),
    ],
)
def test_pretrained_state_loads_downstream(method, arch, options):
    pretext = make(method, arch, **options)
    state = pretext.pretrained_state()
    net = downstream(pretext, out_channels=3)
    own = net.state_dict()
    assert set(state) <= set(own)
    head = {k for k in state if tuple(state[k].shape) != tuple(own[k].shape)}
    encoder_keys = {k for k in own if k.startswith("encoder.")}
    if method == "gan" or (method == "mae" and arch is not VIT):
        # the whole network; only the 1-channel head (and HRNet's refinement of it) differs from the 3-class one
        assert set(state) == set(own)
        assert head and all(k.startswith(("head.", "refine.")) for k in head)
        expected = len(own) - len(head)
    else:
        assert not head and set(state) == encoder_keys
        expected = len(encoder_keys)
    matched, total = load_matching(net, state)
    assert (matched, total) == (expected, len(own))
    for k in set(state) - head:
        torch.testing.assert_close(net.state_dict()[k], state[k])


def test_pretrained_state_is_a_copy():
    pretext = make("mae", VIT, **MAE_OPTS)
    state = pretext.pretrained_state()
    before = state["encoder.pos_embed"].clone()
    train(pretext, smooth_batch(4, 32), 2)
    torch.testing.assert_close(state["encoder.pos_embed"], before)


@pytest.mark.parametrize(
    "method, arch, options, side",
    [("gan", RES, {}, 32), ("mae", VIT, MAE_OPTS, 48), ("mae", RES, {}, 32), ("mff", VIT, MAE_OPTS, 32),
     ("mocov3", VIT, MOCO_OPTS, 32)],
)
def test_preview(method, arch, options, side):
    pretext = make(method, arch, **options)
    batch = smooth_batch(2, side)
    out = pretext.preview(batch)
    if method == "mocov3":
        assert out is None
        return
    assert out.shape == batch.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not out.requires_grad


def test_mae_preview_keeps_visible_patches():
    pretext = make("mae", VIT, **MAE_OPTS)
    batch = smooth_batch(2, 64)
    torch.manual_seed(5)
    out = pretext.preview(batch)
    torch.manual_seed(5)
    _, mask, _ = pretext._predict(batch)
    visible = (1 - mask).unsqueeze(-1).expand(-1, -1, 256)
    torch.testing.assert_close(patchify(out, 16)[visible.bool()], patchify(batch, 16)[visible.bool()])
    assert not torch.allclose(patchify(out, 16)[~visible.bool()], patchify(batch, 16)[~visible.bool()])


# ---------------------------------------------------------------------------- masking


def test_random_masking_ratio_and_restore():
    torch.manual_seed(0)
    ids_keep, ids_restore, mask = random_masking(3, 64, 0.75, torch.device("cpu"))
    assert ids_keep.shape == (3, 16)
    assert (mask.sum(dim=1) == 48).all()
    for b in range(3):
        assert set(ids_keep[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())
    assert not torch.equal(mask[0], mask[1])  # per-sample shuffle
    x = torch.arange(64).repeat(3, 1)
    shuffled = torch.cat([x.gather(1, ids_keep), x.gather(1, torch.argsort(mask, dim=1, stable=True)[:, 16:])], 1)
    torch.testing.assert_close(torch.sort(shuffled, dim=1).values, x)
    assert (ids_restore.argsort(dim=1).gather(1, ids_restore) == torch.arange(64)).all()


def test_patchify_roundtrip():
    x = torch.rand(2, 1, 32, 48)
    p = patchify(x, 16)
    assert p.shape == (2, 6, 256)
    torch.testing.assert_close(p[:, 1], x[:, 0, :16, 16:32].reshape(2, -1))  # raster order
    torch.testing.assert_close(unpatchify(p, 16, (2, 3)), x)


@pytest.mark.parametrize("method", ["mae", "mff"])
def test_vit_encoder_sees_only_visible_tokens(method):
    pretext = make(method, VIT, **MAE_OPTS)
    seen = []
    hook = pretext.encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        out = pretext(smooth_batch(3, 64), "main")
    finally:
        hook.remove()
    assert seen == [torch.Size([3, 4, 32])]  # 16 tokens, 75 % masked -> 4 visible
    assert math.isfinite(float(out["loss"].detach()))
    latent, mask, ids_restore, grid = pretext.encode(smooth_batch(3, 64))
    assert latent.shape == (3, 4, 32) and grid == (4, 4) and (mask.sum(1) == 12).all()


def test_mae_loss_counts_masked_patches_only():
    """Perfect predictions on the masked patches give zero loss whatever the visible ones are."""
    pretext = make("mae", VIT, **MAE_OPTS)
    batch = smooth_batch(2, 64)
    target, _, _ = pretext._target(batch)
    torch.manual_seed(3)
    pred, mask, _ = pretext._predict(batch)
    fake = torch.where(mask.unsqueeze(-1).bool(), target, pred + 5.0)
    per_patch = (fake - target).square().mean(-1)
    assert float((per_patch * mask).sum().detach() / mask.sum()) == 0.0
    torch.manual_seed(3)
    out = pretext(batch, "main")
    torch.testing.assert_close(out["loss"], ((pred - target).square().mean(-1) * mask).sum() / mask.sum())


def test_mae_settings():
    pretext = make("mae", VIT, **MAE_OPTS)
    assert pretext.mask_ratio == 0.75
    assert pretext.optimiser_settings() == {"main": {"lr": 1.5e-4, "betas": (0.9, 0.95), "weight_decay": 0.05}}
    assert make("mae", VIT, batch_size=16, **MAE_OPTS).lr == 1e-4  # floor for small batches
    assert make("mae", VIT, batch_size=1024, **MAE_OPTS).lr == pytest.approx(6e-4)
    default = create_pretext("mae", "vit_tiny_p16", VIT[1])
    assert default.decoder.dim == 128 and len(default.decoder.blocks) == 2
    cnn = make("mae", RES)
    assert cnn.mask_ratio == 0.6 and cnn.mask_patch == 16
    assert make("mae", HRNET).mask_patch == 32


def test_cnn_masking_does_not_leak():
    """The network input does not depend on the masked pixels; the mask covers 60 % of the image."""
    pretext = make("mae", RES)
    batch = smooth_batch(2, 64)
    torch.manual_seed(7)
    inp, mask = pretext.masked_input(batch)
    assert mask.shape == batch.shape and float(mask.mean()) == pytest.approx(0.6, abs=1 / 16)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    altered = batch + mask * torch.randn_like(batch) * 10
    torch.manual_seed(7)
    inp2, mask2 = pretext.masked_input(altered)
    torch.testing.assert_close(mask2, mask)
    torch.testing.assert_close(inp2, inp)
    assert (mask.view(2, 4, 16, 4, 16).std(dim=(2, 4)) == 0).all()  # whole 16 x 16 squares
    assert pixel_mask(1, (40, 24), 16, 0.5, torch.device("cpu")).shape == (1, 1, 40, 24)


# ---------------------------------------------------------------------------- mff


def test_mff_fusion_layers():
    assert default_fusion_layers(12) == [0, 2, 4, 6, 8, 11]
    assert default_fusion_layers(2) == [0, 1]
    assert default_fusion_layers(6) == [0, 1, 2, 3, 4, 5]
    pretext = make("mff", VIT, **MAE_OPTS)
    assert pretext.fusion_layers == [0, 1] and len(pretext.fusion_proj) == 1
    torch.testing.assert_close(pretext.fusion_weights(), torch.tensor([0.5, 0.5]))
    pretext(smooth_batch(2, 32), "main")["loss"].backward()
    assert pretext.fusion_logits.grad is not None and pretext.fusion_logits.grad.abs().sum() > 0
    assert make("mff", VIT, fusion_layers=[0], **MAE_OPTS).fusion_layers == [0, 1]  # last block always fused
    with pytest.raises(InputError, match="fusion_layers"):
        make("mff", VIT, fusion_layers=[5], **MAE_OPTS)


# ---------------------------------------------------------------------------- mocov3


def test_momentum_schedule():
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)
    assert momentum_at(200, 100, 0.99) == pytest.approx(1.0)


@pytest.mark.parametrize("arch", [VIT, RES], ids=["vit", "resunet"])
def test_mocov3_momentum_encoder(arch):
    pretext = make("mocov3", arch, **MOCO_OPTS)
    key, query = pretext._pairs()
    assert all(not k.requires_grad for k in key)
    for k, q in zip(key, query):
        torch.testing.assert_close(k, q)  # deep copies at the start
    opt = optimisers(pretext)["main"]
    batch = smooth_batch(8, 32)
    for step in range(3):
        opt.zero_grad()
        pretext(batch, "main")["loss"].backward()
        opt.step()
        gap_before = sum(float((k - q).square().sum()) for k, q in zip(key, query))
        snapshot = [k.clone() for k in key]
        pretext.after_step(step, 10)
        m = momentum_at(step, 10, 0.9)
        assert pretext.momentum == pytest.approx(m)
        for k, old, q in zip(key, snapshot, query):
            torch.testing.assert_close(k, m * old + (1 - m) * q)
        gap_after = sum(float((k - q).square().sum()) for k, q in zip(key, query))
        assert 0 < gap_after < gap_before  # moved toward the query encoder, still different
    # the key networks get no gradient and are not optimised
    assert all(p.grad is None for p in pretext.key_features.parameters())
    optimised = {id(p) for p in pretext.optimiser_groups()["main"]}
    assert not optimised & {id(p) for p in key}


def test_mocov3_vit_details():
    pretext = make("mocov3", VIT, **MOCO_OPTS)
    assert not any(p.requires_grad for p in pretext.features.encoder.patch_embed.parameters())
    optimised = {id(p) for p in pretext.optimiser_groups()["main"]}
    assert not optimised & {id(p) for p in pretext.features.encoder.patch_embed.parameters()}
    default = create_pretext("mocov3", "vit_tiny_p16", VIT[1])
    assert default.temperature == 0.2 and default.base_momentum == 0.99
    assert default.projector[0].out_features == 1024 and default.projector[-2].out_features == 256
    assert len([m for m in default.projector if isinstance(m, torch.nn.Linear)]) == 3
    assert len([m for m in default.predictor if isinstance(m, torch.nn.Linear)]) == 2
    assert default.optimiser_settings()["main"] == {"lr": 1.5e-4, "betas": (0.9, 0.999), "weight_decay": 0.1}
    # loss = 2 tau (CE(q1, k2) + CE(q2, k1)): for identical random features it is 2 * 2 tau * log(B) on average
    assert pretext.temperature == 0.2


def test_mocov3_contrastive_loss_value():
    pretext = make("mocov3", RES, **MOCO_OPTS)
    q = torch.randn(4, 8)
    k = q.clone()
    loss = pretext._contrast(q, k)
    qn = F.normalize(q, dim=1)
    expected = F.cross_entropy(qn @ qn.t() / 0.2, torch.arange(4)) * 0.4
    torch.testing.assert_close(loss, expected)


def test_views_and_corruptions():
    torch.manual_seed(0)
    batch = smooth_batch(8, 32)
    v1 = make_view(batch, ViewSettings(), 1.0)
    v2 = make_view(batch, ViewSettings(), 0.1)
    assert v1.shape == v2.shape == batch.shape and torch.isfinite(v1).all()
    assert (v1 - v2).abs().mean() > 0.01
    identity = gaussian_blur(batch, torch.zeros(8), 2.0)
    torch.testing.assert_close(identity, batch)
    blurred = gaussian_blur(batch, torch.full((8,), 2.0), 2.0)
    assert blurred.std() < batch.std()
    noisy = corrupt(batch)
    assert noisy.shape == batch.shape and not noisy.requires_grad
    per_sample = (noisy - batch).abs().mean(dim=(1, 2, 3))
    assert per_sample.max() > 0.05 and per_sample.min() < 0.5 * per_sample.max()  # random strengths


# ---------------------------------------------------------------------------- loop compatibility


CONTRACT_CASES = [
    pytest.param("gan", RES, {}, id="gan"),
    pytest.param("mae", VIT, MAE_OPTS, id="mae-vit"),
    pytest.param("mae", RES, {}, id="mae-resunet"),
    pytest.param("mff", VIT, MAE_OPTS, id="mff"),
    pytest.param("mocov3", VIT, MOCO_OPTS, id="mocov3-vit"),
    pytest.param("mocov3", RES, MOCO_OPTS, id="mocov3-resunet"),
    pytest.param("gan", HRNET, {}, id="gan-hrnet"),
    pytest.param("mae", HRNET, {}, id="mae-hrnet"),
    pytest.param("mocov3", HRNET, MOCO_OPTS, id="mocov3-hrnet"),
    pytest.param("mocov3", SMP, MOCO_OPTS, id="mocov3-smp"),
]


@pytest.mark.parametrize("method, arch, options", CONTRACT_CASES)
def test_autocast_bfloat16(method, arch, options):
    pretext = make(method, arch, **options)
    batch = smooth_batch(4, 32)
    for phase in pretext.phases:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = pretext(batch, phase)
        assert out["loss"].dtype == torch.float32 and math.isfinite(float(out["loss"]))
        out["loss"].backward()


@pytest.mark.parametrize("method, arch, options", CONTRACT_CASES)
def test_optimised_parameters_get_gradients_through_forward(method, arch, options):
    """Every parameter a phase optimises receives a gradient from that phase's forward alone
    (what DistributedDataParallel needs; GAN phase "d" leaves the generator alone)."""
    pretext = make(method, arch, **options)
    groups = pretext.optimiser_groups()
    trainable = {id(p) for p in pretext.parameters() if p.requires_grad}
    assert {id(p) for ps in groups.values() for p in ps} == trainable
    for phase in pretext.phases:
        pretext.zero_grad(set_to_none=True)
        pretext(smooth_batch(4, 32), phase)["loss"].backward()
        missing = [p.shape for p in groups[phase] if p.grad is None]
        assert not missing, f"{phase}: {len(missing)} optimised parameters without gradient"


def test_runs_under_distributed_data_parallel(tmp_path):
    """One process, gloo: the loop's ``ddp(batch, phase)`` works for every method."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        for method, arch, options in [c.values for c in CONTRACT_CASES]:
            pretext = make(method, arch, **options)
            ddp = DistributedDataParallel(pretext, find_unused_parameters=method == "gan")
            opts = optimisers(pretext)
            batch = smooth_batch(4, 32)
            for step in range(2):
                for phase in pretext.phases:
                    opts[phase].zero_grad()
                    out = ddp(batch, phase)
                    out["loss"].backward()
                    opts[phase].step()
                ddp.module.after_step(step, 2)
            assert math.isfinite(float(out["loss"].detach()))
    finally:
        dist.destroy_process_group()
