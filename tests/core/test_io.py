"""Reading and writing images: round trips, compression, pixel sizes, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_emssl.errors import InputError
from napari_emssl.io import ImageMeta, read_image, write_image

REAL = Path("/work/shared/data/drosophila_vnc_sstem/stack1/raw/00.tif")


def _random(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("shape", [(33, 47), (3, 20, 31)])
@pytest.mark.parametrize("compression", ["zlib", "lzw", "zstd", None])
def test_round_trip(tmp_path, dtype, shape, compression):
    data = _random(shape, dtype)
    scale = (0.5, 0.004, 0.004)[-len(shape):] if len(shape) == 3 else (0.004, 0.002)
    path = tmp_path / "sub" / "dir" / "image.tif"  # parent folders are created
    write_image(path, data, scale=scale, compression=compression)
    back, meta = read_image(path)
    assert back.dtype == data.dtype
    np.testing.assert_array_equal(back, data)
    assert meta.axes == ("YX" if len(shape) == 2 else "ZYX")
    assert meta.dtype == str(data.dtype)
    assert meta.scale == pytest.approx(scale, rel=1e-6)
    assert meta.unit == "um"
    assert meta.path == str(path)
    assert [p.name for p in path.parent.iterdir()] == ["image.tif"]  # no temporary file left behind


def test_written_file_is_compressed_and_imagej(tmp_path):
    data = np.zeros((2, 64, 64), np.uint8)
    write_image(tmp_path / "a.tif", data, scale=(1.0, 0.01, 0.01), compression="zstd")
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["spacing"] == 1.0
        assert tif.pages[0].compression == tifffile.COMPRESSION.ZSTD


def test_no_scale_and_overwrite(tmp_path):
    path = tmp_path / "a.tif"
    write_image(path, np.ones((4, 5), np.uint8))
    write_image(path, np.full((6, 7), 2, np.uint16))
    back, meta = read_image(path)
    assert back.shape == (6, 7) and back.dtype == np.uint16 and meta.scale is None


def test_real_em_slice():
    if not REAL.exists():
        pytest.skip("shared sample data not present")
    image, meta = read_image(REAL)
    assert image.shape == (1024, 1024) and image.dtype == np.uint8
    assert meta == ImageMeta(scale=None, axes="YX", dtype="uint8", path=str(REAL))
    assert image.std() > 10  # a real EM image, not blank


def test_imagej_hyperstack_singletons_squeezed(tmp_path):
    data = _random((1, 3, 1, 16, 18), np.uint16)
    tifffile.imwrite(tmp_path / "h.tif", data, imagej=True, metadata={"axes": "TZCYX", "spacing": 0.05, "unit": "nm"},
                     resolution=(1 / 4.0, 1 / 4.0))
    image, meta = read_image(tmp_path / "h.tif")
    assert image.shape == (3, 16, 18) and meta.axes == "ZYX"
    assert meta.scale == pytest.approx((0.05e-3, 4e-3, 4e-3))  # nanometres -> micrometres


def test_plain_multipage_stack(tmp_path):
    data = _random((4, 10, 12), np.uint8)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        for page in data:
            tw.write(page, compression="lzw", photometric="minisblack")
    image, meta = read_image(tmp_path / "pages.tif")
    np.testing.assert_array_equal(image, data)
    assert meta.axes == "ZYX"


def test_rgb_rejected(tmp_path):
    rgb = _random((20, 30, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.raises(InputError, match="RGB"):
        read_image(tmp_path / "rgb.tif")


@pytest.mark.parametrize("slices", [3, 4])
def test_small_stack_saved_with_tifffile_defaults_is_a_stack_not_a_colour_image(tmp_path, slices):
    """tifffile stores a (3, Y, X) or (4, Y, X) array as RGB(A) with separate planes: read back as the stack it was."""
    import warnings

    stack = _random((slices, 20, 30), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tifffile.imwrite(tmp_path / "s.tif", stack)
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        assert tif.pages[0].photometric == 2 and tif.series[0].axes == "SYX"  # what the writer did
    image, meta = read_image(tmp_path / "s.tif")
    np.testing.assert_array_equal(image, stack)
    assert meta.axes == "ZYX"
    tifffile.imwrite(tmp_path / "rgb.tif", np.moveaxis(stack[:3], 0, -1), photometric="rgb")  # colour: interleaved
    with pytest.raises(InputError, match="RGB"):
        read_image(tmp_path / "rgb.tif")


def test_grey_saved_as_rgb_is_accepted(tmp_path):
    grey = _random((20, 30), np.uint8)
    tifffile.imwrite(tmp_path / "g.tif", np.stack([grey] * 3, axis=-1), photometric="rgb")
    image, meta = read_image(tmp_path / "g.tif")
    np.testing.assert_array_equal(image, grey)
    assert meta.axes == "YX"


def test_png(tmp_path):
    import imageio.v3 as iio

    grey = _random((20, 30), np.uint8)
    iio.imwrite(tmp_path / "g.png", grey)
    image, _ = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(image, grey)
    iio.imwrite(tmp_path / "rgb.png", _random((20, 30, 3), np.uint8))
    with pytest.raises(InputError, match="RGB"):
        read_image(tmp_path / "rgb.png")


def test_4d_rejected(tmp_path):
    tifffile.imwrite(tmp_path / "h.tif", np.zeros((2, 3, 1, 8, 9), np.uint8), imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(InputError, match="4 dimensions"):
        read_image(tmp_path / "h.tif")


def test_multichannel_rejected(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", _random((3, 2, 8, 9), np.float32), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InputError, match="channels"):
        read_image(tmp_path / "c.tif")


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_truncated_file(tmp_path, compression, dtype):
    path = tmp_path / "a.tif"
    write_image(path, _random((4, 32, 32), dtype), compression=compression)
    raw = path.read_bytes()
    # (the last 16 bytes of a file from write_image are unused padding, so cut deeper)
    for cut in (len(raw) - 100, len(raw) // 2, 30):
        path.write_bytes(raw[:cut])
        with pytest.raises(InputError, match="a.tif"):
            read_image(path)


def test_missing_empty_and_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.tif")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.tif")
    (tmp_path / "junk.tif").write_bytes(b"this is not an image at all")
    with pytest.raises(InputError, match="junk.tif"):
        read_image(tmp_path / "junk.tif")


def test_write_refuses_bad_input(tmp_path):
    with pytest.raises(InputError):
        write_image(tmp_path / "a.tif", np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(InputError):
        write_image(tmp_path / "a.tif", np.zeros((4, 4), np.uint8), scale=(1.0,))
    with pytest.raises(InputError):
        write_image(tmp_path / "a.tif", np.zeros((4, 4), np.uint8), compression="jpeg2000-magic")
    assert not list(tmp_path.iterdir())
