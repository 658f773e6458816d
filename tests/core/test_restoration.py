"""Restoration tasks (denoise, bgremove, superres): losses, modes, outputs and bad input, on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emssl import api
from napari_emssl.config import LEAK_AUTO, LEAK_AUTO_MAX, FinetuneConfig, PredictConfig
from napari_emssl.data.degrade import upscale_bicubic
from napari_emssl.data.normalize import percentile_normalize
from napari_emssl.engine.model_dir import TrainedModel, load_model
from napari_emssl.engine.predictor import count_tiles
from napari_emssl.errors import InputError
from napari_emssl.restoration import denormalize, to_dtype
from napari_emssl.tasks import bgremove, denoise, superres
from napari_emssl.tasks.metrics import psnr, ssim

from conftest import make_disks


def _clean_and_noisy(seed=0, shape=(64, 64), sigma=25.0):
    clean, _, _ = make_disks(seed, shape=shape, noise=0.0)
    clean = np.asarray(clean, np.float32)
    rng = np.random.default_rng(seed + 100)
    noisy = (clean + rng.normal(0.0, sigma, clean.shape)).astype(np.float32)
    return clean, noisy


def _first_last(log, key="loss", n=5):
    values = [row[key] for row in log]
    return float(np.mean(values[:n])), float(np.mean(values[-n:]))


# ---------------------------------------------------------------------------------------------- blind spot


def test_blind_spot_input_never_holds_the_masked_pixels_own_value():
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(4, 1, 32, 32)
    images[:, :, 10, 10] = 1000.0  # a spike: at masked positions it must not show
    seen_masked = 0
    for replace in denoise.REPLACEMENTS:
        for _ in range(50):
            masked, mask = denoise.blind_spot_batch(images, 0.05, generator=gen, replace=replace)
            hit = mask[:, 0, 10, 10]
            seen_masked += int(hit.sum())
            assert torch.all(masked[hit][:, 0, 10, 10] < 1000.0)
            # unmasked pixels are untouched
            assert torch.equal(masked[~mask.expand_as(masked)], images[~mask.expand_as(images)])
    assert seen_masked > 0


def test_neighbour_replacement_shows_one_of_the_eight_neighbours():
    gen = torch.Generator().manual_seed(3)
    images = torch.randperm(4 * 24 * 24, generator=gen).float().view(4, 1, 24, 24)  # every value distinct
    masked, mask = denoise.blind_spot_batch(images, 1 / 16, generator=gen, replace="neighbour")
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
    b, _, ys, xs = mask.nonzero(as_tuple=True)
    assert b.numel() > 50
    for i, y, x in zip(b.tolist(), ys.tolist(), xs.tolist()):
        window = padded[i, 0, y : y + 3, x : x + 3].flatten()
        neighbours = torch.cat([window[:4], window[5:]])
        assert masked[i, 0, y, x] in neighbours and masked[i, 0, y, x] != images[i, 0, y, x]
    assert denoise.REPLACEMENTS[0] == FinetuneConfig().mask_replace == "mean"  # the default, in both places


@pytest.mark.parametrize("replace", ["mean", "neighbour"])
@pytest.mark.parametrize("fraction", [1 / 16, 0.25, 0.5])
def test_masked_input_does_not_depend_on_the_masked_pixels(replace, fraction):
    """Changing every masked pixel changes nothing the network sees: not at its own place, nor at a
    masked neighbour's (whose shown value would let the network read it next door), nor at a corner."""
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    masked, mask = denoise.blind_spot_batch(images, fraction, generator=torch.Generator().manual_seed(9), replace=replace)
    changed = images + 100.0 * mask
    again, same_mask = denoise.blind_spot_batch(changed, fraction, generator=torch.Generator().manual_seed(9), replace=replace)
    assert torch.equal(mask, same_mask) and mask.sum() > 50
    torch.testing.assert_close(again, masked)
    if replace == "neighbour" and fraction < 0.4:  # each shows an unmasked neighbour's value
        assert torch.isin(masked[mask], images[~mask]).all()

def test_revisible_weight_is_constant_then_rises_to_its_end_value():
    assert denoise.revisible_beta(0.0) == denoise.revisible_beta(0.8) == 2.0
    assert denoise.revisible_beta(0.9) == pytest.approx(11.0)
    assert denoise.revisible_beta(1.0) == denoise.revisible_beta(1.5) == 20.0
    assert denoise.LOSSES[0] == FinetuneConfig().denoise_loss == "re-visible"  # the default, in both places


def test_revisible_loss_is_the_blind_spot_loss_plus_a_term_on_the_visible_output():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    images = torch.rand(2, 1, 16, 16)

    def losses(fn, **kw):
        net.zero_grad()
        out = fn(net, images, fraction=1 / 16, generator=torch.Generator().manual_seed(5), **kw)
        out.get("objective", out["loss"]).backward()
        return out, net.weight.grad.clone()

    plain, plain_grad = losses(denoise.denoise_loss)
    zero, zero_grad = losses(denoise.revisible_loss, beta=0.0)
    # beta 0: the second term is the first again (same masks), and the shown loss is the blind-spot loss
    assert zero["loss"].item() == pytest.approx(plain["loss"].item())
    assert zero["objective"].item() == pytest.approx(2 * plain["loss"].item())
    torch.testing.assert_close(zero_grad, 2 * plain_grad)
    high, high_grad = losses(denoise.revisible_loss, beta=20.0)
    # the term holds the visible output: the objective grows with beta, its gradient flows through the masked pass only
    assert high["loss"].item() == pytest.approx(plain["loss"].item()) and high["objective"].item() > 10 * zero["objective"].item()
    masked, mask = denoise.blind_spot_batch(images, 1 / 16, generator=torch.Generator().manual_seed(5))
    net.zero_grad()
    blind = net(masked)
    with torch.no_grad():
        visible = net(images)
    diff = blind - images
    w = mask.float()
    expected = ((diff**2 + (diff + 20.0 * (visible - images)) ** 2) * w).sum() / w.sum()
    expected.backward()
    assert high["objective"].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(high_grad, net.weight.grad)


def test_blind_spot_mask_is_stratified_without_a_fixed_lattice():
    gen = torch.Generator().manual_seed(1)
    mask = denoise.blind_spot_mask((64, 1, 40, 40), 1 / 16, generator=gen)
    fraction = mask.float().mean().item()
    assert 0.045 < fraction < 0.075  # one pixel per 4x4 cell
    # every 4x4 cell of the (shifted) grid gets about one: rows are covered evenly
    rows = mask.float().mean(dim=(0, 1, 3))
    assert rows.min() > 0.02
    # not a fixed lattice: two samples rarely share their masked positions
    overlap = (mask[0] & mask[1]).sum().item() / max(1, mask[0].sum().item())
    assert overlap < 0.5


# ---------------------------------------------------------------------------------------------- denoise


def test_denoise_self_supervised_loss_falls_and_output_keeps_units(tiny_config):
    clean, noisy = _clean_and_noisy()
    result = api.finetune(noisy, config=tiny_config(task="denoise", steps=60, lr=3e-3))
    first, last = _first_last(result.model.log)
    assert np.isfinite(last) and last < first
    assert result.model.meta["task"] == "denoise"
    assert result.model.meta["lineage"]["finetune"]["mode"].startswith("self-supervised")
    assert result.model.meta["lineage"]["finetune"]["mask_replace"] == "mean"
    assert result.model.meta["lineage"]["finetune"]["denoise_loss"] == "re-visible"
    # the re-visible weight follows the run's progress: 2 for 80 % of the steps, then up to 20 at the last step
    betas = [row["beta"] for row in result.model.log]
    assert betas[0] == betas[47] == 2.0 and betas[-1] == pytest.approx(20.0 - 18.0 / 12) and betas == sorted(betas)
    assert all(row["objective"] >= row["loss"] for row in result.model.log)
    pred = api.predict(result.model, noisy, PredictConfig(device="cpu"))
    assert pred.image.shape == noisy.shape and pred.image.dtype == np.float32
    assert pred.labels is None and pred.scale_factor == 1
    # in the image's units, not normalised 0..1
    assert 20 < float(np.median(pred.image)) < 220


def test_denoise_paired_improves_psnr_and_reports_it(tiny_config):
    clean, noisy = _clean_and_noisy(seed=3)
    result = api.finetune(noisy, config=tiny_config(task="denoise", steps=80, lr=3e-3), target=clean)
    metrics = result.model.meta["metrics"]
    assert {"psnr", "ssim", "input_psnr", "input_ssim"} <= set(metrics)
    first, last = _first_last(result.model.log)
    assert last < first
    pred = api.predict(result.model, noisy, PredictConfig(device="cpu"), target=clean)
    assert pred.metrics["psnr"] == pytest.approx(psnr(clean, pred.image, float(np.ptp(clean))), abs=1e-2)
    assert pred.metrics["psnr"] > psnr(clean, noisy, float(np.ptp(clean)))  # a real improvement over the noisy input
    # the score shown at the end of training is the one Apply's default (8 views for a 2D image) gives
    assert metrics["views"] == 8 and metrics["psnr"] == pytest.approx(pred.metrics["psnr"], abs=0.02)


def test_denoise_stack_slice_by_slice_and_saved_model_gives_identical_output(tiny_config, tmp_path):
    _, a = _clean_and_noisy(seed=1, shape=(48, 48))
    _, b = _clean_and_noisy(seed=2, shape=(48, 48))
    stack = np.stack([a, b]).astype(np.uint16)
    result = api.finetune(stack, config=tiny_config(task="denoise", steps=4), out_dir=str(tmp_path / "m"))
    model = load_model(tmp_path / "m")
    assert model.task == "denoise"
    p1 = api.predict(result.model, stack, PredictConfig(device="cpu"))
    p2 = api.predict(model, stack, PredictConfig(device="cpu"))
    assert p1.image.shape == stack.shape
    np.testing.assert_array_equal(p1.image, p2.image)
    kept = api.predict(model, stack, PredictConfig(device="cpu", keep_dtype=True))
    assert kept.image.dtype == np.uint16 and "clipped_pixels" in kept.info


def test_mean_correction_removes_a_slow_offset_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128].astype(np.float32)
    clean = 100 + 40 * np.sin(xx / 3.0) * np.cos(yy / 4.0)  # fine structure the correction must not touch
    noisy = (clean + rng.normal(0.0, 10.0, clean.shape)).astype(np.float32)
    offset = 5.0 + 0.05 * xx  # what a denoiser's output may be off by, slowly varying
    restored = clean + offset
    corrected = denoise.mean_correction(restored, noisy, 16.0)
    assert corrected.dtype == np.float32 and corrected.shape == clean.shape
    before, after = np.mean((restored - clean) ** 2), np.mean((corrected - clean) ** 2)
    assert after < before / 20  # the offset is gone (what is left: the noise averaged over ~3000 pixels, and borders)
    assert abs(float(np.mean(corrected - clean))) < 0.5
    np.testing.assert_array_equal(denoise.mean_correction(restored, noisy, 0.0), restored.astype(np.float32))
    with pytest.raises(ValueError, match="two 2D planes of one shape"):
        denoise.mean_correction(restored, noisy[:-1], 16.0)


def test_self_supervised_denoising_records_and_applies_the_mean_correction(tiny_config):
    from napari_emssl.engine.model_dir import TrainedModel

    _, noisy = _clean_and_noisy(seed=5, shape=(48, 64))
    model = api.finetune(noisy, config=tiny_config(task="denoise", steps=3)).model
    assert model.meta["mean_correction"] == FinetuneConfig.mean_correction == 16.0
    bare = TrainedModel(net=model.net, meta={**model.meta, "mean_correction": 0.0})
    stack = np.stack([noisy, noisy[::-1] * 2.0])
    for image in (noisy, stack):
        events = list(api.iter_predict(model, image, PredictConfig(device="cpu", tta=False)))
        assert events[0].info["mean_correction"] == 16.0
        corrected, plain = events[-1].result.image, api.predict(bare, image, PredictConfig(device="cpu", tta=False)).image
        assert not np.allclose(corrected, plain)
        # the same as correcting the plain output afterwards, slice by slice, in the image's units
        expect = np.stack([denoise.mean_correction(p, n, 16.0) for p, n in zip(plain.reshape((-1,) + noisy.shape),
                                                                                  image.reshape((-1,) + noisy.shape))])
        np.testing.assert_allclose(corrected, expect.reshape(image.shape), rtol=1e-5, atol=1e-4 * float(np.ptp(image)))
    off = api.finetune(noisy, config=tiny_config(task="denoise", steps=3, mean_correction=0.0)).model
    assert off.meta["mean_correction"] == 0.0
    np.testing.assert_array_equal(api.predict(off, noisy, PredictConfig(device="cpu")).image,
                                  api.predict(bare, noisy, PredictConfig(device="cpu")).image)  # the same weights: seed 0
    clean, _ = _clean_and_noisy(seed=5, shape=(48, 64))
    paired = api.finetune(noisy, config=tiny_config(task="denoise", steps=2), target=clean).model
    assert paired.meta["mean_correction"] == 0.0  # a clean target may differ from the input in brightness


def _own_weight_filter(image: np.ndarray) -> np.ndarray:
    """A linear "denoiser": 0.2 of the pixel itself plus 0.1 of each of its 8 neighbours (borders reflected)."""
    from scipy.ndimage import correlate

    weights = np.full((3, 3), 0.1, np.float32)
    weights[1, 1] = 0.2
    return correlate(np.asarray(image, np.float32), weights, mode="mirror")


def _neighbours_only(image: np.ndarray) -> np.ndarray:
    """The same filter without the pixel itself, renormalised: what the leak correction should give at share 1."""
    from scipy.ndimage import correlate

    weights = np.full((3, 3), 0.125, np.float32)
    weights[1, 1] = 0.0
    return correlate(np.asarray(image, np.float32), weights, mode="mirror")


def test_own_pixel_weight_is_measured_and_the_leak_taken_out():
    rng = np.random.default_rng(3)
    noisy = rng.normal(0.5, 0.2, (96, 112)).astype(np.float32)
    plain = _own_weight_filter(noisy)
    probe = denoise.leak_probe(noisy.shape)
    assert probe.dtype == np.float32 and set(np.unique(probe)) == {-1.0, 1.0}
    np.testing.assert_array_equal(probe, denoise.leak_probe(noisy.shape))  # seeded: a prediction repeats exactly
    weight = denoise.own_pixel_weight(plain, _own_weight_filter(noisy + denoise.LEAK_PROBE * probe), probe)
    assert weight.dtype == np.float32 and weight.shape == noisy.shape
    inner = (slice(16, -16), slice(16, -16))
    assert abs(float(weight[inner].mean()) - 0.2) < 0.01 and float(np.abs(weight[inner] - 0.2).max()) < 0.06
    target = _neighbours_only(noisy)
    full = denoise.leak_correction(plain, noisy, weight, 1.0)
    assert np.abs(full - target)[inner].mean() < 0.1 * np.abs(plain - target)[inner].mean()
    exact = denoise.leak_correction(plain, noisy, np.full_like(noisy, 0.2), 1.0)  # with the true weight: exact
    np.testing.assert_allclose(exact, target, atol=1e-5)
    half = denoise.leak_correction(plain, noisy, np.full_like(noisy, 0.2), 0.5)  # b + (1 - f) J (noisy - b)
    np.testing.assert_allclose(half, target + 0.5 * 0.2 * (noisy - target), atol=1e-5)
    np.testing.assert_array_equal(denoise.leak_correction(plain, noisy, weight, 0.0), plain)
    with pytest.raises(ValueError, match="three 2D planes of one shape"):
        denoise.leak_correction(plain, noisy[:-1], weight, 0.5)
    with pytest.raises(ValueError, match="three 2D planes of one shape"):
        denoise.own_pixel_weight(plain, plain, probe[:, :-1])


def test_noise_variance_of_poisson_gaussian_noise_from_the_image_alone():
    """The variance grows linearly with the signal (shot noise) on top of a floor (read noise); its mean recovered within 5 %."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    clean = 0.05 + 0.95 * (0.5 + 0.25 * np.sin(6 * xx) + 0.25 * np.cos(4 * yy))  # smooth: no detail at the pixel scale
    dose, read = 20.0, 0.05
    noisy = rng.poisson(clean * dose) / dose + read * rng.standard_normal(clean.shape)
    true = clean / dose + read**2
    variance = denoise.noise_variance(noisy, clean)
    assert variance.shape == clean.shape and variance.dtype == np.float64
    assert abs(variance.mean() / true.mean() - 1) < 0.05
    dark, bright = clean < 0.3, clean > 0.8
    assert variance[bright].mean() > 1.5 * variance[dark].mean()  # shot noise: more where the signal is higher
    # per region within 20 % (the median absolute deviation of discrete counts is biased at about 1 electron per pixel)
    assert abs(variance[dark].mean() / true[dark].mean() - 1) < 0.2 and abs(variance[bright].mean() / true[bright].mean() - 1) < 0.2
    small = denoise.noise_variance(noisy[:9, :9], clean[:9, :9])  # too few blocks for the bins: one value, still right
    assert np.ptp(small) == 0 and 0.3 < small[0, 0] / true[:9, :9].mean() < 3
    assert np.all(denoise.noise_variance(noisy[:1, :5], clean[:1, :5]) > 0)  # no 2 x 2 block at all
    with pytest.raises(ValueError, match="two 2D planes of one shape"):
        denoise.noise_variance(noisy, clean[:-1])


def test_auto_leak_share_is_where_the_error_is_least():
    """SURE's share for a known linear "network" (0.2 of the pixel, 0.1 of each neighbour) against the true error."""
    rng = np.random.default_rng(12)
    clean, _ = _clean_and_noisy(seed=12, shape=(160, 160))
    from scipy.ndimage import gaussian_filter

    clean = gaussian_filter((clean - clean.min()) / np.ptp(clean), 1.5)
    sigma = 0.12
    noisy = (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)
    plain = _own_weight_filter(noisy)
    probing, probe = denoise.probed_input(noisy)
    probed = _own_weight_filter(probing)
    weight = denoise.own_pixel_weight(plain, probed, probe)
    response = denoise.probe_response(plain, probed, probe)
    assert abs(float(response.mean()) - 0.2) < 0.01  # unsmoothed: the own weight plus zero-mean cross terms
    shares = np.linspace(0, 1, 101)
    errors = [float(np.mean((denoise.leak_correction(plain, noisy, weight, f) - clean) ** 2)) for f in shares]
    best = float(shares[int(np.argmin(errors))])
    assert 0.1 < best < 0.9  # the test image has its best share inside the range
    for variance in (np.full(clean.shape, sigma**2), denoise.noise_variance(noisy, _neighbours_only(noisy))):
        share = denoise.sure_leak_share(plain, noisy, weight, response, variance, upper=1.0)
        assert abs(share - best) < 0.1
        error = float(np.mean((denoise.leak_correction(plain, noisy, weight, share) - clean) ** 2))
        assert error < 1.01 * min(errors)
    # the package's rule: clipped to [0, LEAK_AUTO_MAX], 0 when the network gives the pixels no weight
    assert denoise.sure_leak_share(plain, noisy, weight, response, np.full(clean.shape, 10.0)) == LEAK_AUTO_MAX
    assert denoise.sure_leak_share(plain, noisy, weight, response, np.full(clean.shape, 1e-6)) == 0.0
    zero = np.zeros_like(weight)
    assert denoise.sure_leak_share(plain, noisy, zero, zero, np.full(clean.shape, sigma**2)) == 0.0
    corrected, share = denoise.correct_leak(plain, noisy, plain, probed, probe, LEAK_AUTO)
    assert 0.0 <= share <= LEAK_AUTO_MAX and abs(share - best) < 0.1
    np.testing.assert_array_equal(corrected, denoise.leak_correction(plain, noisy, weight, share))
    fixed, used = denoise.correct_leak(plain, noisy, plain, probed, probe, 0.5)
    assert used == 0.5 and np.array_equal(fixed, denoise.leak_correction(plain, noisy, weight, 0.5))
    assert denoise.leak_share_text([0.5]) == "leak correction share 0.50"
    assert denoise.leak_share_text([0.25, 0.75]) == "leak correction shares 0.25-0.75 over 2 slices (mean 0.50)"
    assert denoise.leak_share_text([]) == ""


def test_prediction_takes_out_the_leak_of_a_known_network(tiny_config):
    """A network that is a known linear filter: prediction with share 1 gives the neighbours-only filter, per slice."""
    from napari_emssl.engine.model_dir import TrainedModel

    _, noisy = _clean_and_noisy(seed=6, shape=(64, 80))
    model = api.finetune(noisy, config=tiny_config(task="denoise", steps=1)).model
    assert model.meta["leak_correction"] == FinetuneConfig.leak_correction == LEAK_AUTO
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect", bias=False)
    with torch.no_grad():
        conv.weight.fill_(0.1)
        conv.weight[0, 0, 1, 1] = 0.2
    for attr in ("size_multiple", "receptive_field"):
        setattr(conv, attr, getattr(model.net, attr))
    meta = {**model.meta, "mean_correction": 0.0}
    stack = np.stack([noisy, noisy[::-1].copy() * 3.0])
    inner = (Ellipsis, slice(12, -12), slice(12, -12))
    for image in (noisy, stack):
        plain = api.predict(TrainedModel(net=conv, meta={**meta, "leak_correction": 0.0}), image,
                            PredictConfig(device="cpu", tta=False, amp=False)).image
        events = list(api.iter_predict(TrainedModel(net=conv, meta={**meta, "leak_correction": 1.0}), image,
                                       PredictConfig(device="cpu", tta=False, amp=False)))
        assert events[0].info["leak_correction"] == 1.0
        tiles = [e for e in events if type(e).__name__ == "PredictionTile"]
        assert tiles[-1].done == tiles[-1].total == events[0].total_steps  # the probe pass is counted in the progress
        full = events[-1].result.image
        target = np.stack([_neighbours_only(p) for p in image.reshape((-1,) + noisy.shape)]).reshape(image.shape)
        assert np.abs(full - target)[inner].mean() < 0.15 * np.abs(plain - target)[inner].mean()
    half = api.predict(TrainedModel(net=conv, meta={**meta, "leak_correction": 0.5}), noisy,
                       PredictConfig(device="cpu", tta=True, amp=False)).image
    plain = api.predict(TrainedModel(net=conv, meta={**meta, "leak_correction": 0.0}), noisy,
                        PredictConfig(device="cpu", tta=True, amp=False)).image
    expect = _neighbours_only(noisy) + 0.5 * 0.2 * (noisy - _neighbours_only(noisy))  # b + (1 - f) J (noisy - b)
    assert np.abs(half - expect)[inner].mean() < 0.15 * np.abs(plain - expect)[inner].mean()
    # chosen at prediction instead of the model's share (PredictConfig.leak_correction; None: the model's)
    override = api.predict(TrainedModel(net=conv, meta={**meta, "leak_correction": 0.0}), noisy,
                           PredictConfig(device="cpu", tta=True, amp=False, leak_correction=0.5)).image
    np.testing.assert_allclose(override, half, rtol=1e-6, atol=1e-6)
    # "auto": one share per slice, reported; the same as that fixed share
    stack_events = list(api.iter_predict(TrainedModel(net=conv, meta={**meta, "leak_correction": LEAK_AUTO}), stack,
                                         PredictConfig(device="cpu", tta=False, amp=False)))
    assert stack_events[0].info["leak_correction"] == LEAK_AUTO
    shares = stack_events[-1].result.info["leak_shares"]
    assert len(shares) == 2 and all(0.0 <= f <= LEAK_AUTO_MAX for f in shares)
    single = list(api.iter_predict(TrainedModel(net=conv, meta={**meta, "leak_correction": LEAK_AUTO}), noisy,
                                   PredictConfig(device="cpu", tta=False, amp=False)))[-1].result
    fixed = api.predict(TrainedModel(net=conv, meta={**meta, "leak_correction": single.info["leak_shares"][0]}), noisy,
                        PredictConfig(device="cpu", tta=False, amp=False)).image
    np.testing.assert_allclose(single.image, fixed, rtol=1e-4, atol=1e-4 * float(np.ptp(noisy)))
    assert events[-1].result.info["leak_shares"] == [1.0, 1.0]  # a fixed share is reported too
    paired = api.finetune(noisy, config=tiny_config(task="denoise", steps=1), target=noisy).model
    assert paired.meta["leak_correction"] == 0.0  # a paired denoiser learned from a clean target, not from its neighbours
    paired_out = api.predict(paired, noisy, PredictConfig(device="cpu", tta=False)).image
    np.testing.assert_array_equal(api.predict(paired, noisy, PredictConfig(device="cpu", tta=False, leak_correction=1.0)).image,
                                  paired_out)  # never corrected
    off = api.finetune(noisy, config=tiny_config(task="denoise", steps=1, leak_correction=0.0)).model
    assert off.meta["leak_correction"] == 0.0


# ---------------------------------------------------------------------------------------------- superres


@pytest.mark.parametrize("arch", [None, ("hrnet_w18_small", {"head_channels": 8})], ids=["resunet", "hrnet"])
def test_superres_starts_exactly_at_bicubic_and_output_is_factor_times_larger(tiny_config, arch):
    """Every output convolution starts at zero (HRNet has two whose outputs are summed)."""
    _, image = _clean_and_noisy(seed=4, sigma=5.0)
    changes = {"arch": arch[0], "arch_kwargs": arch[1]} if arch else {}
    result = api.finetune(image, config=tiny_config(task="superres", steps=1, lr=1e-12, back_projection=0, **changes))
    pred = api.predict(result.model, image, PredictConfig(device="cpu"))
    assert pred.image.shape == (128, 128) and pred.scale_factor == 2
    norm, stats = percentile_normalize(image, 1.0, 99.8)
    expected = denormalize(upscale_bicubic(norm, 2), stats, "superres")
    np.testing.assert_allclose(pred.image, expected, atol=1e-2 * float(np.ptp(image)))


def test_superres_back_projection_makes_the_result_downscale_to_the_input(tiny_config):
    """Self-supervised super-resolution records 5 back-projection steps and applies them after the views: the
    result's 2 x 2 block means are the input's; the network's own result is not; paired models record none."""
    from napari_emssl.data.degrade import downscale_area

    _, image = _clean_and_noisy(seed=9, shape=(48, 64), sigma=5.0)
    model = api.finetune(image, config=tiny_config(task="superres", steps=3)).model
    assert model.meta["back_projection"] == FinetuneConfig.back_projection == 5
    norm, stats = percentile_normalize(image, 1.0, 99.8)
    bare = TrainedModel(net=model.net, meta={**model.meta, "back_projection": 0})
    for tta in (False, True):
        raw = api.predict(bare, image, PredictConfig(device="cpu", tta=tta, amp=False)).image
        out = api.predict(model, image, PredictConfig(device="cpu", tta=tta, amp=False)).image
        raw_gap = np.abs(downscale_area(raw, 2) - image).max()
        assert np.abs(downscale_area(out, 2) - image).max() < 0.05 * raw_gap  # block means now the input's
        expect = superres.back_project((raw - stats.p_low) / (stats.p_high - stats.p_low), norm, 2, 5)
        np.testing.assert_allclose(out, denormalize(expect, stats, "superres"), atol=1e-3 * float(np.ptp(image)))
    consistent = upscale_bicubic(norm, 2)
    for _ in range(30):
        consistent = superres.back_project(consistent, norm, 2, 1)
    np.testing.assert_allclose(superres.back_project(consistent, norm, 2, 3), consistent, atol=1e-4)  # nothing left to do
    with pytest.raises(ValueError, match="upscaling"):
        superres.back_project(np.zeros((10, 10), np.float32), norm, 2, 1)
    paired = api.finetune(image, config=tiny_config(task="superres", steps=1), target=upscale_bicubic(image, 2)).model
    assert paired.meta["back_projection"] == 0  # a real pair need not be area averaging
    off = api.finetune(image, config=tiny_config(task="superres", steps=1, back_projection=0)).model
    assert off.meta["back_projection"] == 0
    for bad in (-1, 101, 2.5, True):
        with pytest.raises(InputError, match="back_projection"):
            FinetuneConfig(task="superres", back_projection=bad)


def test_superres_self_supervised_beats_bicubic_on_its_own_training_pairs(tiny_config):
    clean, _ = _clean_and_noisy(seed=5, shape=(96, 96))
    result = api.finetune(clean, config=tiny_config(task="superres", steps=80, lr=3e-3, factor=2))
    log = result.model.log
    first, last = _first_last(log, "l1")
    assert last < first
    assert np.mean([r["l1"] for r in log[-10:]]) < np.mean([r["bicubic_l1"] for r in log[-10:]])


def test_superres_paired_x4_and_target_shape_checked(tiny_config):
    high, _ = _clean_and_noisy(seed=6, shape=(128, 128), sigma=0.0)
    low = high.reshape(32, 4, 32, 4).mean(axis=(1, 3))
    result = api.finetune(low, config=tiny_config(task="superres", factor=4, steps=6), target=high)
    assert "bicubic_psnr" in result.model.meta["metrics"]
    pred = api.predict(result.model, low, PredictConfig(device="cpu"), target=high)
    assert pred.image.shape == (128, 128) and pred.scale_factor == 4 and "psnr" in pred.metrics
    with pytest.raises(InputError, match="target has shape"):
        api.finetune(low, config=tiny_config(task="superres", factor=2, steps=1), target=high)
    with pytest.raises(InputError, match="must match"):
        api.predict(result.model, low, PredictConfig(device="cpu"), target=low)


def _lattice_image(shape=(96, 96), period=11.0, seed=0):
    from napari_emssl.data.synthetic import Lattice, render_columns

    lattice = Lattice(a1=(0.0, period), a2=(period, 0.0), sigmas=(1.6,))
    image = render_columns(shape, *lattice.columns(shape, 4.0))
    return (1000.0 * image + np.random.default_rng(seed).normal(0.0, 5.0, shape)).astype(np.float32)


def test_superres_lattice_pairs_match_the_image_lattice_and_train(tiny_config):
    """Synthetic lattice pairs: constants from the image's period times the factor, inputs the area-downscaled
    scenes on the input's intensity map; fine-tuning records the mode and the period and learns to beat bicubic."""
    from napari_emssl.data.degrade import downscale_area
    from napari_emssl.tasks import superres_lattice

    image = _lattice_image()
    assert superres_lattice.find_period(image) == pytest.approx(11.0, rel=0.06)
    settings, period = superres_lattice.lattice_settings(image, 2, 128)
    assert settings.spacing == pytest.approx((0.8 * 2 * period, 1.4 * 2 * period))
    assert superres_lattice.lattice_settings(image, 4, 64)[0].spacing == (32.0, 32.0)  # capped at half the patch
    low, high = superres_lattice.lattice_pairs(np.random.default_rng(0), settings, 3, 64, 2)
    assert low.shape == (3, 1, 32, 32) and high.shape == (3, 1, 64, 64)
    np.testing.assert_allclose(downscale_area(high[:, 0], 2), low[:, 0], atol=1e-5)
    assert np.percentile(low, 1) == pytest.approx(0.0, abs=0.02) and np.percentile(low, 99.8) == pytest.approx(1.0, abs=0.02)
    result = api.finetune(image, config=tiny_config(task="superres", steps=60, lr=3e-3, lattice_pairs=True))
    lineage = result.model.meta["lineage"]["finetune"]
    assert lineage["mode"] == "synthetic lattice pairs" and lineage["lattice_period_px"] == pytest.approx(11.0, rel=0.06)
    assert result.model.meta["config"]["lattice_pairs"] is True and result.model.meta["back_projection"] == 5
    log = result.model.log
    assert np.mean([r["l1"] for r in log[-10:]]) < np.mean([r["bicubic_l1"] for r in log[-10:]])
    assert api.predict(result.model, image, PredictConfig(device="cpu")).image.shape == (192, 192)


def test_superres_lattice_pairs_refused_without_a_lattice_with_a_target_or_for_other_tasks(tiny_config):
    noise = np.random.default_rng(1).normal(100.0, 10.0, (96, 96)).astype(np.float32)
    with pytest.raises(InputError, match="No atomic lattice was found"):
        api.finetune(noise, config=tiny_config(task="superres", lattice_pairs=True))
    image = _lattice_image()
    with pytest.raises(InputError, match="with a target image the training is paired"):
        api.finetune(image, config=tiny_config(task="superres", lattice_pairs=True), target=upscale_bicubic(image, 2))
    with pytest.raises(InputError, match="lattice pairs are for super-resolution"):
        FinetuneConfig(task="denoise", lattice_pairs=True)
    with pytest.raises(InputError, match="lattice_pairs must be true or false"):
        FinetuneConfig(task="superres", lattice_pairs="yes")
    assert FinetuneConfig().lattice_pairs is False


def test_superres_output_geometry():
    assert superres.output_scale((40.0, 2.0, 2.0), 2) == (40.0, 1.0, 1.0)
    # four output pixels cover source pixel 0 (centre 0): their centres are at -0.375 .. 0.375
    assert superres.output_translate((0.0, 0.0), (1.0, 1.0), 4) == (-0.375, -0.375)
    assert superres.output_translate((5.0, 10.0, 10.0), (1.0, 2.0, 2.0), 2) == (5.0, 9.5, 9.5)


# ---------------------------------------------------------------------------------------------- bgremove


def test_bgremove_synthetic_and_paired(tiny_config):
    from napari_emssl.data.synthetic import make_sample

    rng = np.random.default_rng(0)
    sample = make_sample(rng, 64)
    result = api.finetune(sample.degraded, config=tiny_config(task="bgremove", steps=5))
    assert result.model.meta["lineage"]["finetune"]["mode"] == "synthetic pairs"
    assert all(np.isfinite(r["loss"]) for r in result.model.log)
    paired = api.finetune(sample.degraded, config=tiny_config(task="bgremove", steps=30, lr=3e-3), target=sample.columns)
    first, last = _first_last(paired.model.log)
    assert last < first
    out = api.predict(paired.model, sample.degraded, PredictConfig(device="cpu"))
    assert out.image.shape == sample.degraded.shape


def test_spacing_estimate_finds_the_lattice_period():
    from napari_emssl.data.synthetic import Lattice, render_columns

    lattice = Lattice(a1=(0.0, 11.0), a2=(11.0, 0.0), sigmas=(1.6,))
    image = render_columns((256, 256), *lattice.columns((256, 256), 4.0))
    period = bgremove.estimate_spacing(image)
    assert period == pytest.approx(11.0, rel=0.06)
    rng = np.random.default_rng(0)
    assert bgremove.estimate_spacing(rng.normal(size=(256, 256))) is None  # white noise: no lattice
    settings, found = bgremove.adapted_settings(image)
    assert found is not None and settings.spacing[0] < 11.0 < settings.spacing[1]


# ---------------------------------------------------------------------------------------------- bad input


def test_constant_and_too_small_images_are_refused(tiny_config):
    with pytest.raises(InputError, match="constant"):
        api.finetune(np.full((64, 64), 7, np.uint8), config=tiny_config(task="denoise"))
    with pytest.raises(InputError, match="at least 64 x 64"):
        api.finetune(np.random.default_rng(0).random((40, 40)), config=tiny_config(task="superres", factor=4))
    with pytest.raises(InputError, match="at least 16"):
        api.finetune(np.random.default_rng(0).random((8, 40)), config=tiny_config(task="denoise"))
    clean, noisy = _clean_and_noisy()
    with pytest.raises(InputError, match="target has shape"):
        api.finetune(noisy, config=tiny_config(task="denoise"), target=clean[:32])
    with pytest.raises(InputError, match="target is constant"):
        api.finetune(noisy, config=tiny_config(task="denoise"), target=np.zeros_like(clean))
    with pytest.raises(InputError, match="factor"):
        tiny_config(task="superres", factor=3)


def test_integer_output_is_clipped_not_wrapped():
    out, clipped = to_dtype(np.array([-5.0, 0.4, 254.6, 300.0], np.float32), np.uint8)
    assert out.tolist() == [0, 0, 255, 255] and clipped == 2
    out, clipped = to_dtype(np.array([1.5], np.float32), np.float32)
    assert out.dtype == np.float32 and clipped == 0


def test_metrics_known_values():
    ref = np.zeros((16, 16), np.float32)
    ref[4:12, 4:12] = 1.0
    assert psnr(ref, ref) == np.inf
    assert psnr(ref, ref + 0.1, data_range=1.0) == pytest.approx(20.0, abs=1e-6)
    assert ssim(ref, ref) == pytest.approx(1.0)


def test_dihedral_views_invert_exactly():
    from napari_emssl.restoration import DIHEDRAL, _dihedral, _dihedral_inverse

    plane = np.arange(12.0).reshape(3, 4)
    views = [_dihedral(plane, k, f) for k, f in DIHEDRAL]
    assert len({v.tobytes() + bytes(v.shape) for v in views}) == 8  # eight different views
    for (k, f), v in zip(DIHEDRAL, views):
        np.testing.assert_array_equal(_dihedral_inverse(v, k, f), plane)


def test_test_time_augmentation_averages_the_eight_views(tiny_config):
    _, image = _clean_and_noisy(seed=7, shape=(48, 64), sigma=5.0)
    model = api.finetune(image, config=tiny_config(task="superres", steps=1, lr=1e-12)).model  # = bicubic: symmetric
    plain = api.predict(model, image, PredictConfig(device="cpu", tta=False))
    events = list(api.iter_predict(model, image, PredictConfig(device="cpu", tta=True)))
    tta = events[-1].result
    assert tta.image.shape == plain.image.shape == (96, 128)
    np.testing.assert_allclose(tta.image, plain.image, atol=1e-3 * float(np.ptp(image)))
    info = events[0].info
    assert info["tta"] is True and events[0].total_steps == 8 * count_tiles((96, 128), info["tile"], info["overlap"])
    denoiser = api.finetune(image, config=tiny_config(task="denoise", steps=3)).model
    a = api.predict(denoiser, image, PredictConfig(device="cpu", tta=True)).image
    b = api.predict(denoiser, image, PredictConfig(device="cpu", tta=False)).image
    assert a.shape == b.shape and not np.allclose(a, b)  # a real network is not symmetric: the views differ


def test_test_time_augmentation_is_automatic_for_single_images_only(tiny_config, monkeypatch):
    """Default ``tta=None``: the 8-view average for a single image; a stack or a very big image gets each slice and
    its left-right mirror averaged; ``tta=False`` one view."""
    from napari_emssl.config import finetune as finetune_config

    _, image = _clean_and_noisy(seed=8, shape=(48, 64), sigma=5.0)
    denoiser = api.finetune(image, config=tiny_config(task="denoise", steps=2)).model
    auto = list(api.iter_predict(denoiser, image, PredictConfig(device="cpu")))
    assert auto[0].info["tta"] is True and auto[0].info["views"] == 8
    np.testing.assert_array_equal(auto[-1].result.image, api.predict(denoiser, image, PredictConfig(device="cpu", tta=True)).image)
    stack = np.stack([image, image[::-1]])
    events = list(api.iter_predict(denoiser, stack, PredictConfig(device="cpu")))
    assert events[0].info["tta"] is False and events[0].info["views"] == 2
    tiles = count_tiles((48, 64), events[0].info["tile"], events[0].info["overlap"])
    assert events[0].total_steps == 2 * (2 + 1) * tiles  # 2 slices x (2 views + the leak-correction probe pass)
    # the mean of each slice's prediction and its mirror's, mirrored back (corrections off, so this is exact)
    bare = TrainedModel(net=denoiser.net, meta={**denoiser.meta, "leak_correction": 0.0, "mean_correction": 0.0})
    one = PredictConfig(device="cpu", tta=False, amp=False)
    expected = (api.predict(bare, stack, one).image + api.predict(bare, np.ascontiguousarray(stack[..., ::-1]), one).image[..., ::-1]) / 2
    got = api.predict(bare, stack, PredictConfig(device="cpu", amp=False)).image
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.ptp(stack)))
    plain = list(api.iter_predict(denoiser, stack, PredictConfig(device="cpu", tta=False)))
    assert plain[0].info["views"] == 1 and not np.allclose(plain[-1].result.image, events[-1].result.image)
    assert list(api.iter_predict(denoiser, stack, PredictConfig(device="cpu", tta=True)))[0].info["tta"] is True
    monkeypatch.setattr(finetune_config, "TTA_AUTO_MAX_PIXELS", image.size - 1)  # a "big" single image
    assert list(api.iter_predict(denoiser, image, PredictConfig(device="cpu")))[0].info["views"] == 2
    assert PredictConfig().uses_tta((10, 4096, 4096)) is False and PredictConfig(tta=False).uses_tta((8, 8)) is False
    assert PredictConfig().view_count((10, 4096, 4096)) == 2 and PredictConfig(tta=False).view_count((3, 8, 8)) == 1
    assert PredictConfig(tta=True).view_count((3, 8, 8)) == 8 and PredictConfig().view_count((8, 8)) == 8
    with pytest.raises(InputError, match="tta must be"):
        PredictConfig(tta="yes")


def test_mean_replacement_leaves_out_masked_neighbours():
    """Two adjacent masked pixels: neither replacement may hold the other's (or its own) value."""
    images = torch.zeros(1, 1, 8, 8)
    images[0, 0, 3, 3], images[0, 0, 3, 4] = 800.0, 160.0
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[0, 0, 3, 3] = mask[0, 0, 3, 4] = True
    import napari_emssl.tasks.denoise as dn

    original = dn.blind_spot_mask
    dn.blind_spot_mask = lambda *a, **k: mask
    try:
        masked, _ = dn.blind_spot_batch(images, 0.5)
    finally:
        dn.blind_spot_mask = original
    assert masked[0, 0, 3, 3] == 0.0 and masked[0, 0, 3, 4] == 0.0  # their unmasked neighbours are all 0
    assert masked[0, 0, 2, 3] == 0.0  # unmasked pixels are untouched
