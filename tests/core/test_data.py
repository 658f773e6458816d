"""Validation, normalisation, sparse labels, patch sampling, augmentation and tiled prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_emssl.data import IGNORE_INDEX
from napari_emssl.data.augment import augment_pair
from napari_emssl.data.labels import check_trainable, painted_classes, painted_slices, sparse_targets
from napari_emssl.data.normalize import NormStats, percentile_normalize
from napari_emssl.data.patches import PatchSampler
from napari_emssl.data.tiling import Cancelled, predict_tiled, tile_count
from napari_emssl.data.validate import check_image, check_labels
from napari_emssl.engine.cancel import CancelToken
from napari_emssl.errors import InputError

REAL = Path("/work/shared/data/drosophila_vnc_sstem/stack1/raw/00.tif")


@pytest.fixture(scope="module")
def em_crop() -> np.ndarray:
    """A 192x160 crop of a real EM slice (or a synthetic stand-in), float32 in about 0..1."""
    if REAL.exists():
        from napari_emssl.io import read_image

        image, _ = read_image(REAL)
        crop = image[400:592, 300:460]
    else:
        rng = np.random.default_rng(0)
        crop = (rng.random((192, 160)) * 255).astype(np.uint8)
    return percentile_normalize(crop)[0]


# ----------------------------------------------------------------------------- validate


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, bool])
def test_check_image_accepts(dtype):
    image = np.zeros((5, 6), dtype=dtype)
    assert check_image(image) is image
    stack = np.ones((2, 5, 6), dtype=dtype)  # constant is fine
    assert check_image(stack) is stack


@pytest.mark.parametrize(
    "image, pattern",
    [
        (np.zeros((64, 64, 3), np.uint8), "RGB"),
        (np.zeros((64, 64, 4), np.uint8), "RGB"),
        (np.zeros((5,), np.uint8), "1 dimensions"),
        (np.zeros((2, 2, 5, 5), np.uint8), "4 dimensions"),
        (np.zeros((0, 5), np.uint8), "empty"),
        (np.zeros((5, 5), np.complex64), "complex"),
        (np.zeros((5, 5), object), "object"),
    ],
)
def test_check_image_rejects(image, pattern):
    with pytest.raises(InputError, match=pattern):
        check_image(image, name="image")


def test_check_image_small_last_axis_is_a_stack():
    # three slices of a tiny stack are not RGB (first axis not > 4)
    check_image(np.zeros((3, 10, 3), np.uint8))


def test_nan_inf_counted():
    image = np.zeros((2, 10, 10), np.float32)
    image[0, 1, 1] = np.nan
    image[1, 2, 3] = np.inf
    image[1, 4, 4] = -np.inf
    with pytest.raises(InputError, match="contains 3 pixels that are NaN or infinite"):
        check_image(image)


def test_check_labels():
    labels = np.zeros((4, 5), np.uint8)
    out = check_labels(labels, (4, 5))
    assert out.dtype == np.int64
    with pytest.raises(InputError, match=r"\(4, 5\).*\(4, 6\)"):
        check_labels(labels, (4, 6))
    assert check_labels(np.ones((4, 5), np.float32) * 2, (4, 5)).dtype == np.int64
    with pytest.raises(InputError, match="non-whole"):
        check_labels(np.full((4, 5), 0.5), (4, 5))
    with pytest.raises(InputError, match="negative"):
        check_labels(np.full((4, 5), -1, np.int32), (4, 5))
    i64 = np.zeros((4, 5), np.int64)
    assert check_labels(i64, (4, 5)) is i64  # no copy when already int64


# ----------------------------------------------------------------------------- normalise


def test_percentile_normalize_basic():
    image = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    out, stats = percentile_normalize(image, 1.0, 99.0)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert stats.p_low == pytest.approx(9.99) and stats.p_high == pytest.approx(989.01)
    assert np.percentile(out, 1) == pytest.approx(0.0, abs=1e-6)
    assert np.percentile(out, 99) == pytest.approx(1.0, abs=1e-6)
    again, same = percentile_normalize(image * 0 + 500, stats=stats)
    assert same is stats and np.allclose(again, (500 - stats.p_low) / (stats.p_high - stats.p_low))
    assert NormStats.from_dict(stats.to_dict()) == stats


def test_percentile_normalize_constant_and_stack():
    out, stats = percentile_normalize(np.full((3, 8, 8), 7, np.uint8))
    assert np.all(out == 0) and stats.p_high - stats.p_low == 1.0
    stack = np.stack([np.zeros((8, 8)), np.full((8, 8), 100.0)])  # stats over all slices together
    out, stats = percentile_normalize(stack, 0, 100)
    assert out[0].max() == 0 and out[1].min() == 1
    with pytest.raises(InputError):
        percentile_normalize(stack, 50, 10)
    with pytest.raises(InputError):
        NormStats.from_dict({"low": 1})


def test_percentile_normalize_big_is_subsampled_and_close():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, size=(40, 512, 512), dtype=np.uint8)  # 10 M pixels
    out, stats = percentile_normalize(big)
    exact = np.percentile(big, [1.0, 99.8])
    assert abs(stats.p_low - exact[0]) <= 1 and abs(stats.p_high - exact[1]) <= 1
    _, stats_view = percentile_normalize(big[:, ::2, 1:])  # non-contiguous input
    assert abs(stats_view.p_high - exact[1]) <= 1


# ----------------------------------------------------------------------------- labels


def test_labels_helpers():
    labels = np.zeros((3, 6, 6), np.uint8)
    labels[0, 1, 1] = 1
    labels[2, 2, 2] = 4
    assert painted_classes(labels) == [1, 4]
    assert painted_slices(labels) == [0, 2]
    assert painted_slices(labels[0]) == [0] and painted_slices(labels[1]) == []
    targets = sparse_targets(labels)
    assert targets.dtype == np.int64
    assert targets[0, 1, 1] == 0 and targets[2, 2, 2] == 3
    assert np.count_nonzero(targets == IGNORE_INDEX) == labels.size - 2
    assert check_trainable(labels) == [1, 4]


def test_check_trainable_refuses():
    with pytest.raises(InputError, match="Nothing is painted"):
        check_trainable(np.zeros((4, 4), np.uint8))
    one = np.zeros((4, 4), np.uint8)
    one[0, 0] = 2
    with pytest.raises(InputError, match="Only class 2"):
        check_trainable(one)
    stray = one.astype(np.int32)
    stray[1, 1] = 1
    stray[2, 2] = 5000
    with pytest.raises(InputError, match="5000"):
        check_trainable(stray)


# ----------------------------------------------------------------------------- augment


def test_augment_keeps_alignment():
    rng = np.random.default_rng(0)
    image = rng.random((1, 16, 16)).astype(np.float32)
    target = (image[0] > 0.5).astype(np.int64)  # derived from the image
    seen_rot = set()
    for _ in range(40):
        img, tgt = augment_pair(image, target, rng, intensity=False, noise=False)
        assert img.flags.c_contiguous and tgt.flags.c_contiguous
        np.testing.assert_array_equal((img[0] > 0.5).astype(np.int64), tgt)
        seen_rot.add(img.tobytes())
    assert len(seen_rot) == 8  # all flips and rotations of a square patch happen
    # with intensity changes and noise, geometry still matches (monotone maps keep the ordering mostly)
    img, tgt = augment_pair(image, target, np.random.default_rng(3))
    assert img.shape == (1, 16, 16) and img.dtype == np.float32 and tgt.dtype == np.int64
    assert np.corrcoef(img[0].ravel(), tgt.ravel())[0, 1] > 0.6
    # inputs are untouched
    assert np.array_equal(target, (image[0] > 0.5))


def test_augment_float_target_and_non_square():
    rng = np.random.default_rng(1)
    image = rng.random((1, 8, 12)).astype(np.float32)
    for _ in range(10):
        img, tgt = augment_pair(image, image.copy(), rng, noise=False)
        assert img.shape == (1, 8, 12)  # no rotation of non-square patches
        np.testing.assert_allclose(img, tgt, atol=1e-6)  # same intensity map on a float target
    img, tgt = augment_pair(image, image.copy(), np.random.default_rng(5), flips=False, rot90=False, intensity=False)
    assert np.array_equal(tgt, image)


# ----------------------------------------------------------------------------- patches


def _sparse_setup(shape=(256, 256)):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[20:24, 30:34] = 1  # 16 px background
    labels[200:201, 180:182] = 2  # 2 px of a rare class
    return image, sparse_targets(labels)


def test_sampler_prefers_painted_and_balances():
    image, targets = _sparse_setup()
    sampler = PatchSampler(image, targets, 32, seed=0, augment=False)
    _, t = sampler.sample(64)
    assert t.shape == (64, 32, 32) and t.dtype == np.int64
    base_rate = np.mean(targets != IGNORE_INDEX)
    painted_rate = np.mean(t != IGNORE_INDEX)
    assert painted_rate > 20 * base_rate
    has = [(p == c).any() for p in t for c in (0, 1)]
    per_class = np.array(has).reshape(-1, 2).mean(axis=0)
    assert per_class[1] > 0.3  # the 2-pixel class is in about half the patches


def test_sampler_deterministic():
    image, targets = _sparse_setup((100, 120))
    a = PatchSampler(image, targets, 24, seed=7).sample(5)
    b = PatchSampler(image, targets, 24, seed=7).sample(5)
    c = PatchSampler(image, targets, 24, seed=8).sample(5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_sampler_small_image_is_padded():
    image = np.arange(70, dtype=np.float32).reshape(7, 10)
    labels = np.zeros((7, 10), np.uint8)
    labels[0, 0], labels[6, 9] = 1, 2
    x, t = PatchSampler(image, sparse_targets(labels), 16, seed=0, augment=False).sample(3)
    assert x.shape == (3, 1, 16, 16) and t.shape == (3, 16, 16)
    np.testing.assert_array_equal(x[0, 0, :7, :10], image)  # only one position exists
    assert np.all(t[:, 7:, :] == IGNORE_INDEX) and np.count_nonzero(t[0] != IGNORE_INDEX) == 2


def test_sampler_stack_uses_only_painted_slices():
    stack = np.stack([np.full((40, 40), z, np.float32) for z in range(6)])
    labels = np.zeros((6, 40, 40), np.uint8)
    labels[2, 5:8, 5:8] = 1
    labels[4, 30:33, 30:33] = 2
    sampler = PatchSampler(stack, sparse_targets(labels), 16, seed=0, painted_fraction=0.5, augment=False)
    x, _ = sampler.sample(60)
    assert set(np.unique(x[:, 0, 0, 0]).tolist()) == {2.0, 4.0}
    assert sampler.slices == [2, 4]


def test_sampler_real_em_with_augment(em_crop):
    labels = np.zeros(em_crop.shape, np.uint8)
    labels[10:20, 10:20] = 1
    labels[100:104, 50:60] = 2
    x, t = PatchSampler(em_crop, sparse_targets(labels), 64, seed=1).sample(4)
    assert x.shape == (4, 1, 64, 64) and np.isfinite(x).all()
    assert (t != IGNORE_INDEX).any()


def test_sampler_refuses():
    image = np.zeros((10, 10), np.float32)
    with pytest.raises(InputError, match="Nothing is painted"):
        PatchSampler(image, np.full((10, 10), IGNORE_INDEX, np.int64), 8)
    with pytest.raises(InputError, match="shape"):
        PatchSampler(image, np.zeros((10, 11), np.int64), 8)


def test_sampler_without_targets():
    x, t = PatchSampler(np.zeros((3, 20, 20), np.float32), None, 8, seed=0).sample(2)
    assert x.shape == (2, 1, 8, 8) and t is None


# ----------------------------------------------------------------------------- tiling


def _conv_fn(batch: np.ndarray) -> np.ndarray:
    """A translation-equivariant 5x5 'network' (zero padding) with two outputs."""
    from scipy.ndimage import correlate

    kernel = np.random.default_rng(42).random((5, 5)).astype(np.float32)
    out = np.empty((batch.shape[0], 2) + batch.shape[2:], np.float32)
    for i, x in enumerate(batch[:, 0]):
        out[i, 0] = correlate(x, kernel, mode="constant")
        out[i, 1] = np.tanh(x)
    return out


def test_tiled_equals_untiled(em_crop):
    image = em_crop
    full = _conv_fn(image[None, None])[0]
    calls = []
    tiled = predict_tiled(_conv_fn, image, out_channels=2, tile=64, overlap=16, batch_size=3,
                          on_tile=lambda done, total: calls.append((done, total)))
    assert tiled.shape == (2,) + image.shape and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, full, atol=1e-5)  # no seams anywhere, borders included
    total = tile_count(image.shape, 64, 16)
    assert calls[-1] == (total, total) and len(calls) == -(-total // 3)


def test_tiled_identity_torch_like_output():
    image = np.random.default_rng(0).random((130, 70)).astype(np.float32)
    out = predict_tiled(lambda b: b * 2, image, out_channels=1, tile=50, overlap=20, size_multiple=16)
    np.testing.assert_allclose(out[0], image * 2, atol=1e-6)


@pytest.mark.parametrize("shape", [(7, 300), (300, 7), (1, 1), (65, 64)])
def test_tiled_odd_shapes(shape):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    seen = set()

    def fn(batch):
        seen.add(batch.shape[2:])
        return np.concatenate([batch, -batch], axis=1)

    out = predict_tiled(fn, image, out_channels=2, tile=60, overlap=16, size_multiple=32)
    assert out.shape == (2,) + shape
    assert seen == {(64, 64)}  # tile rounded up to the size multiple
    np.testing.assert_allclose(out[0], image, atol=1e-6)
    np.testing.assert_allclose(out[1], -image, atol=1e-6)


def test_tiled_cancel():
    token = CancelToken()
    done = []

    def on_tile(d, total):
        done.append(d)
        if d >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        predict_tiled(lambda b: b, np.zeros((200, 200), np.float32), out_channels=1, tile=32, overlap=8,
                      batch_size=1, on_tile=on_tile, cancel=token)
    assert done == [1, 2]
