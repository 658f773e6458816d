"""Unlabeled pretraining data: sources (arrays, files, folders, stacks, zarr), lazy reads, reproducible crops."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile

from napari_emssl.data.unlabeled import UnlabeledPatches, build_dataset, open_sources
from napari_emssl.errors import InputError


def _grey(seed: int, shape) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 250).astype(np.uint8)


def test_numpy_2d_and_stack_give_normalised_float_patches():
    ds = build_dataset([_grey(0, (80, 90)), _grey(1, (3, 64, 64)).astype(np.uint16) * 200], patch=32, samples_per_epoch=10)
    assert len(ds) == 10 and ds.info()["images"] == 4
    item = ds[3]
    assert item.dtype.is_floating_point and tuple(item.shape) == (1, 32, 32)
    values = np.concatenate([ds[i].numpy().ravel() for i in range(10)])
    assert -0.1 < values.min() and values.max() < 1.1 and values.std() > 0.1  # percentile-normalised, not raw


def test_dask_array_source_reads_only_crops():
    da = pytest.importorskip("dask.array")
    ds = build_dataset([da.from_array(_grey(0, (4, 96, 96)), chunks=(1, 32, 32))], patch=32, samples_per_epoch=4)
    assert isinstance(ds.sources[0].array, da.Array)
    assert tuple(ds[0].shape) == (1, 32, 32)


def test_uncompressed_tiff_stack_is_memory_mapped_not_loaded(tmp_path):
    stack = _grey(2, (5, 64, 80))
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    ds = build_dataset([str(path)], patch=32, samples_per_epoch=8)
    source = ds.sources[0]
    assert source.mode == "memmap" and isinstance(source.array, np.memmap)  # lazy: pages come from disk on demand
    assert source.n_planes == 5 and source.shape_yx == (64, 80)
    # a crop equals the normalised window of the right slice
    raw = source.read(3, slice(10, 42), slice(5, 37))
    np.testing.assert_array_equal(raw, stack[3, 10:42, 5:37].astype(np.float32))
    # sent to a DataLoader worker, the memory map is not pickled (reopened there)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.sources[0]._array is None
    np.testing.assert_array_equal(clone[5].numpy(), ds[5].numpy())


def test_compressed_tiff_is_read_chunkwise(tmp_path):
    stack = _grey(3, (2, 96, 96))
    path = tmp_path / "zlib.tiff"
    tifffile.imwrite(path, stack, photometric="minisblack", compression="zlib", tile=(32, 32))
    source = open_sources([path], 32)[0][0]
    assert source.mode in ("tiff-zarr", "pages")
    np.testing.assert_array_equal(source.read(1, slice(40, 72), slice(0, 32)), stack[1, 40:72, 0:32])


def test_png_rgb_small_and_folder(tmp_path):
    from skimage import io as skio

    folder = tmp_path / "imgs"
    folder.mkdir()
    skio.imsave(folder / "b_grey.png", _grey(4, (64, 64)), check_contrast=False)
    rgb = np.stack([_grey(5, (70, 70)), _grey(6, (70, 70)), _grey(7, (70, 70))], axis=-1)
    skio.imsave(folder / "a_rgb.png", rgb, check_contrast=False)
    skio.imsave(folder / "c_small.png", _grey(8, (20, 20)), check_contrast=False)
    (folder / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="smaller than"):
        sources, notes = open_sources([folder], 32)
    assert [s.name.split("/")[-1] for s in sources] == ["a_rgb.png", "b_grey.png"]  # sorted; small one skipped
    assert sources[0].rgb and any("colour" in n for n in notes) and any("c_small.png" in n for n in notes)
    grey = sources[0].read(0, slice(0, 8), slice(0, 8))
    np.testing.assert_allclose(grey, rgb[:8, :8].astype(np.float32).mean(axis=-1), rtol=1e-6)


def test_nothing_usable_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no"):
        open_sources([tmp_path / "empty"], 32)
    with pytest.raises(InputError, match="does not exist"):
        open_sources([tmp_path / "missing.tif"], 32)
    with pytest.raises(InputError, match="at least 64 x 64"), pytest.warns(UserWarning):
        open_sources([_grey(0, (40, 40))], 64)
    with pytest.raises(InputError, match="no data"):
        open_sources([], 32)
    with pytest.raises(InputError, match="pixel type"):
        open_sources([np.zeros((40, 40), dtype=complex)], 32)


def test_zarr_array_source(tmp_path):
    zarr = pytest.importorskip("zarr")
    data = _grey(9, (3, 64, 64))
    z = zarr.open(str(tmp_path / "vol.zarr"), mode="w", shape=data.shape, chunks=(1, 32, 32), dtype=data.dtype)
    z[:] = data
    ds = build_dataset([str(tmp_path / "vol.zarr")], patch=32, samples_per_epoch=4)
    assert ds.sources[0].n_planes == 3
    np.testing.assert_array_equal(ds.sources[0].read(2, slice(0, 32), slice(32, 64)), data[2, :32, 32:])


def test_crops_are_reproducible_and_depend_on_seed_epoch_index():
    sources, _ = open_sources([_grey(0, (128, 128))], 32)
    a = UnlabeledPatches(sources, 32, 16, seed=1)
    b = UnlabeledPatches(sources, 32, 16, seed=1)
    np.testing.assert_array_equal(a[7].numpy(), b[7].numpy())
    assert not np.array_equal(a[7].numpy(), a[8].numpy())
    b.set_epoch(1)
    assert not np.array_equal(a[7].numpy(), b[7].numpy())
    np.testing.assert_array_equal(a[16 + 7].numpy(), b[7].numpy())  # index e*n+i is item i of epoch e later
    assert not np.array_equal(UnlabeledPatches(sources, 32, 16, seed=2)[7].numpy(), a[7].numpy())


def test_images_are_drawn_in_proportion_to_their_area():
    sources, _ = open_sources([_grey(0, (32, 32)), _grey(1, (64, 64))], 32)
    for value, source in enumerate(sources):  # mark each source's crops by its index
        source.crop = lambda plane, y, x, size, v=value: np.full((size, size), v, np.float32)
    ds = UnlabeledPatches(sources, 32, 400, augment=False)
    share_big = float(np.mean([ds[i].numpy()[0, 0, 0] for i in range(400)]))
    assert 0.72 < share_big < 0.88  # 4096 / (1024 + 4096) = 0.8
