"""Bad input, fuzzed (property-based, with hypothesis).

The property everywhere: a call either gives a valid result or raises an
:class:`~napari_emssl.errors.EmsslError` (``InputError`` / ``ModelFormatError``) with a
non-empty message; never another exception type, never a crash, never a hang. The examples
are few (``max_examples`` small, derandomized so CI sees the same ones) and tiny, so the
whole file runs in well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from napari_emssl import api  # noqa: E402
from napari_emssl.config import FinetuneConfig, PredictConfig  # noqa: E402
from napari_emssl.data.labels import check_trainable  # noqa: E402
from napari_emssl.data.validate import check_image, check_labels  # noqa: E402
from napari_emssl.engine.model_dir import TrainedModel, load_model  # noqa: E402
from napari_emssl.errors import EmsslError  # noqa: E402
from napari_emssl.io import read_image  # noqa: E402

from _fuzz_tiff import mutate  # noqa: E402
from conftest import TINY_ARCH, TINY_ARCH_KWARGS  # noqa: E402  (tests/conftest.py, imported at collection)

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=int(__import__("os").environ.get("EMSSL_FUZZ_EXAMPLES", 30)), deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=max(15, FUZZ.max_examples // 2))

DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64, np.bool_]


def outcome(fn, *args, known: tuple[type[BaseException], str] | None = None, **kwargs):
    """``(result, None)`` or ``(None, error)`` for an EmsslError with a message; anything else fails the test.

    ``known`` = (exception type, words of its message): a bug already reported by its own
    ``xfail(strict=True)`` test, let through here so the fuzzing can look for others.
    """
    try:
        return fn(*args, **kwargs), None
    except EmsslError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return None, exc
    except Exception as exc:
        if known is not None and isinstance(exc, known[0]) and known[1] in str(exc):
            return None, exc
        raise


def images(min_side: int = 0, max_side: int = 6, max_dims: int = 4, min_dims: int = 0):
    """Arrays of every supported (and some unsupported) dtype and shape, NaN and inf included."""
    def for_dtype(dtype):
        dtype = np.dtype(dtype)
        elements = None
        if dtype.kind == "f":  # finite values within +-1e38: beyond, see test_values_beyond_float32_range
            big = float(np.float32(1e38))
            elements = st.one_of(st.floats(-big, big, width=dtype.itemsize * 8),
                                 st.sampled_from([np.nan, np.inf, -np.inf]))
        return hnp.arrays(dtype, hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side),
                          elements=elements)

    return st.sampled_from(DTYPES).flatmap(for_dtype)


# ---------------------------------------------------------------------------------------------- validation


@FUZZ
@given(image=images())
def test_check_image(image):
    result, error = outcome(check_image, image)
    if error is None:
        assert result is image and image.ndim in (2, 3) and image.size > 0
        assert image.dtype.kind not in "fc" or np.isfinite(image).all()
    else:
        assert image.ndim not in (2, 3) or image.size == 0 or (image.dtype.kind == "f" and not np.isfinite(image).all()) \
            or (image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4)


LABEL_DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.int64, np.uint64, np.float32, np.float64, np.bool_]


@FUZZ
@given(data=st.data())
def test_check_labels_and_trainable(data):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=5), label="shape")
    dtype = np.dtype(data.draw(st.sampled_from(LABEL_DTYPES), label="dtype"))
    same = data.draw(st.booleans(), label="same shape")
    lshape = shape if same else data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5), label="lshape")
    if dtype.kind == "f":
        elements = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8),
                             st.integers(-2, 4).map(float))
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        elements = st.one_of(st.integers(max(info.min, -2), min(info.max, 4)), st.integers(info.min, info.max))
    else:
        elements = None
    labels = data.draw(hnp.arrays(dtype, lshape, elements=elements), label="labels")
    before = labels.copy()
    result, error = outcome(check_labels, labels, shape)
    assert np.array_equal(labels, before, equal_nan=labels.dtype.kind == "f")  # never modified in place
    if error is None:
        assert result.dtype == np.int64 and result.shape == shape and (result >= 0).all()
        classes, error = outcome(check_trainable, result)
        if error is None:
            assert len(classes) >= 2 and all(c >= 1 for c in classes)
        else:  # nothing painted, one class, or a class number too high
            painted = np.unique(result[result > 0])
            assert len(painted) < 2 or painted.max() > 2 or "class" in str(error)


@pytest.mark.parametrize("labels", [np.zeros((8, 8), np.uint8), np.full((8, 8), 2, np.uint8), np.ones((8, 8), bool)],
                         ids=["empty", "single class 2", "single class bool"])
def test_empty_and_single_class_labels_refused_by_finetune(labels, tiny_config):
    image = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    _, error = outcome(api.finetune, image, labels, tiny_config(steps=1))
    assert error is not None and "paint at least two classes" in str(error)


# ---------------------------------------------------------------------------------------------- prediction


@pytest.fixture(scope="module")
def denoiser():

    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    config = FinetuneConfig(task="denoise", arch=TINY_ARCH, arch_kwargs=dict(TINY_ARCH_KWARGS), init="random", patch_size=32,
                            batch_size=2, steps=1, preview_every_s=0, device="cpu")
    return api.finetune(image, None, config).model


TILES = st.one_of(st.none(), st.integers(-3, 70))
OVERLAPS = st.one_of(st.none(), st.integers(-2, 40))


def _predict_config(tile, overlap, batch):
    kw = {"device": "cpu", "amp": False, "batch_size": batch}
    if tile is not None:
        kw["tile"] = tile
    if overlap is not None:
        kw["overlap"] = overlap
    return PredictConfig(**kw)


@FUZZ
@given(image=images(max_side=40, max_dims=3, min_dims=1), tile=TILES, overlap=OVERLAPS, batch=st.integers(0, 3))
def test_predict_segmentation(tiny_model, image, tile, overlap, batch):
    config, error = outcome(_predict_config, tile, overlap, batch)
    if error is not None:
        return
    result, error = outcome(api.predict, tiny_model, image, config)
    if error is None:
        k = tiny_model.meta["out_channels"]
        assert result.labels.shape == image.shape and result.labels.min() >= 1 and result.labels.max() <= k


@FEW
@given(image=images(min_side=1, max_side=40, max_dims=3, min_dims=2), tile=TILES, overlap=OVERLAPS)
def test_predict_restoration(denoiser, image, tile, overlap):
    config, error = outcome(_predict_config, tile, overlap, 2)
    if error is not None:
        return
    result, error = outcome(api.predict, denoiser, image, config)
    if error is None:
        assert result.image.shape == image.shape and np.isfinite(result.image).all()


def test_predict_restoration_bool_image(denoiser):
    image = np.zeros((8, 8), bool)
    image[2:5, 3:6] = True
    result, error = outcome(api.predict, denoiser, image, PredictConfig(device="cpu"))
    assert error is None or "constant" in str(error)


@FEW
@given(data=st.data())
def test_finetune_segmentation(tiny_config, data):
    image = data.draw(images(min_side=1, max_side=40, min_dims=2, max_dims=3), label="image")
    shape = image.shape if data.draw(st.booleans(), label="same shape") else data.draw(
        hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=40), label="lshape")
    labels = data.draw(hnp.arrays(np.dtype(data.draw(st.sampled_from([np.uint8, np.int32, np.float32]), label="ldtype")),
                                  shape, elements=st.integers(0, 3)), label="labels")
    before = labels.copy()
    result, error = outcome(api.finetune, image, labels, tiny_config(steps=1))
    assert labels.tobytes() == before.tobytes()
    if error is None:
        assert result.model.task == "segment" and result.steps == 1


@FEW
@given(image=images(min_side=1, max_side=80, min_dims=2, max_dims=3), task=st.sampled_from(["denoise", "bgremove", "superres"]))
def test_finetune_restoration(tiny_config, image, task):
    result, error = outcome(api.finetune, image, None, tiny_config(task=task, steps=1))
    if error is None:
        assert result.model.task == task


def test_finetune_restoration_bool_image(tiny_config):
    image = np.zeros((64, 64), bool)
    image[10:30, 20:40] = True
    outcome(api.finetune, image, None, tiny_config(task="bgremove", steps=1))


@pytest.mark.parametrize("value", [3.4028236e38, 1e300])
def test_values_beyond_float32_range(denoiser, value):
    image = np.zeros((16, 16), np.float64)
    image[4:8, 4:8] = value
    result, error = outcome(api.predict, denoiser, image, PredictConfig(device="cpu"))
    assert error is not None or np.isfinite(result.image).all()


# ---------------------------------------------------------------------------------------------- corrupt image files

TIFF_FUZZ = Path(__file__).with_name("_fuzz_tiff.py")
CHILD_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _child(*args: str, timeout: float = 100) -> subprocess.CompletedProcess:
    """Run _fuzz_tiff.py in a child process (under its own memory limit: a damaged TIFF may claim many GB)."""
    return subprocess.run([sys.executable, str(TIFF_FUZZ), *args], capture_output=True, text=True, timeout=timeout,
                          env=CHILD_ENV)


def test_read_corrupt_and_random_image_files():
    """Truncated, bit-flipped and byte-changed TIFFs (3 compressions, 4 dtypes, 2D and 3D); random bytes as TIFF/PNG/JPEG."""
    proc = _child(os.environ.get("EMSSL_FUZZ_EXAMPLES", "40"), "3")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-3000:] + proc.stderr[-5000:]


def test_read_tiff_with_a_damaged_strip_tag(tmp_path):
    from _fuzz_tiff import tiff_bytes

    raw = bytearray(tiff_bytes((np.arange(35) % 200).astype(np.uint8).reshape(5, 7)))
    raw[42] = 0  # inside the first IFD's tag entries
    (tmp_path / "image.tif").write_bytes(bytes(raw))
    outcome(read_image, tmp_path / "image.tif")


def test_read_tiff_claiming_a_huge_image_is_refused_without_allocating_it():
    proc = _child("--huge", "2", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("InputError") and "damaged" in proc.stdout, proc.stdout


# ---------------------------------------------------------------------------------------------- corrupt model files


@pytest.fixture(scope="module")
def model_bytes(tiny_model, tmp_path_factory):
    folder = tiny_model.save(tmp_path_factory.mktemp("fuzz_model"))
    return {name: (folder / name).read_bytes() for name in ("model.safetensors", "model.json")}


def _load(files: dict[str, bytes]):
    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            (Path(folder) / name).write_bytes(content)
        return outcome(load_model, folder)


@FUZZ
@given(data=st.data())
def test_corrupt_weights_file(model_bytes, data):
    weights = model_bytes["model.safetensors"]
    how = data.draw(st.sampled_from(["random bytes", "truncate", "flip bit", "header byte", "random byte"]), label="how")
    if how == "random bytes":
        weights = data.draw(st.binary(max_size=200), label="bytes")
    elif how == "header byte":  # the 8-byte length and the JSON header
        buf = bytearray(weights)
        buf[data.draw(st.integers(0, 200), label="at")] = data.draw(st.integers(0, 255), label="byte")
        weights = bytes(buf)
    else:
        weights = mutate(weights, how, data.draw)
    result, error = _load({"model.safetensors": weights, "model.json": model_bytes["model.json"]})
    if error is None:
        assert isinstance(result, TrainedModel) and result.task == "segment"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


@FUZZ
@given(data=st.data())
def test_garbage_model_json(model_bytes, data):
    meta = json.loads(model_bytes["model.json"])
    how = data.draw(st.sampled_from(["random bytes", "random JSON", "change a field", "drop a field", "truncate"]), label="how")
    if how == "random bytes":
        text = data.draw(st.binary(max_size=200), label="bytes")
    elif how == "random JSON":
        text = json.dumps(data.draw(JSON_VALUES, label="json")).encode()
    elif how == "truncate":
        full = model_bytes["model.json"]
        text = full[: data.draw(st.integers(0, len(full) - 1), label="cut")]
    else:
        key = data.draw(st.sampled_from(sorted(meta)), label="key")
        if how == "drop a field":
            del meta[key]
        else:
            sub = meta[key]
            if isinstance(sub, dict) and sub and data.draw(st.booleans(), label="nested"):
                sub[data.draw(st.sampled_from(sorted(sub)), label="subkey")] = data.draw(JSON_VALUES, label="value")
            else:
                meta[key] = data.draw(JSON_VALUES, label="value")
        text = json.dumps(meta).encode()
    result, error = _load({"model.safetensors": model_bytes["model.safetensors"], "model.json": text})
    if error is None:
        assert isinstance(result, TrainedModel)
        image = np.random.default_rng(0).random((12, 12)).astype(np.float32)
        out, error = outcome(api.predict, result, image, PredictConfig(device="cpu", amp=False))
        if error is None:
            assert (out.labels if out.labels is not None else out.image).shape == image.shape


def test_deeply_nested_model_json(model_bytes):
    _, error = _load({"model.safetensors": model_bytes["model.safetensors"], "model.json": b"[" * 100_000 + b"]" * 100_000})
    assert error is not None and "model.json" in str(error)
