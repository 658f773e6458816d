"""Batch prediction over files and out-of-core streaming (lazy inputs, results written slice by slice)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_emssl import api
from napari_emssl.batch import expand_inputs, iter_predict_files, output_paths
from napari_emssl.config import PredictConfig
from napari_emssl.engine.cancel import CancelToken
from napari_emssl.engine.events import FileEnded, FileStarted, PredictionSlice, RunCancelled, RunFinished
from napari_emssl.engine.predictor import TileForward
from napari_emssl.errors import InputError
from napari_emssl.io import read_image
from napari_emssl.io.lazy import LazyArray, open_lazy
from napari_emssl.io.sinks import TiffSink, ZarrSink

from conftest import make_disks  # tests/conftest.py (imported at collection, before tests/napari's)

CPU = PredictConfig(device="cpu", tile=64)


def _stack(seed: int, shape=(3, 80, 72)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 200 + 20).astype(np.uint8)


def _write(path: Path, array: np.ndarray, compression=None, scale=(0.05, 0.004, 0.004)) -> Path:
    meta = {"axes": "ZYX" if array.ndim == 3 else "YX", "unit": "um"}
    if array.ndim == 3:
        meta["spacing"] = scale[0]
    tifffile.imwrite(path, array, imagej=True, compression=compression, resolution=(1 / scale[-1], 1 / scale[-2]),
                     metadata=meta)
    return path


def _events(gen):
    return list(gen)


def test_lazy_tiff_reads_slices_and_pixel_size(tmp_path):
    stack = _stack(0)
    for compression in (None, "zlib"):
        path = _write(tmp_path / f"s_{compression}.tif", stack, compression)
        lazy, meta = open_lazy(path)
        assert isinstance(lazy, LazyArray) and lazy.shape == stack.shape and lazy.dtype == np.uint8
        np.testing.assert_array_equal(lazy[1], stack[1])
        np.testing.assert_array_equal(np.asarray(lazy), stack)
        assert meta.scale == pytest.approx((0.05, 0.004, 0.004)) and meta.axes == "ZYX"
        lazy.close()


def test_lazy_open_falls_back_to_reading_small_odd_files(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    image, meta = open_lazy(tmp_path / "rgb.tif")  # converted (equal channels) by the eager reader
    assert isinstance(image, np.ndarray) and image.shape == (20, 30)


def test_streamed_files_equal_the_in_memory_prediction(tiny_model, tmp_path):
    stack = _stack(1)
    path = _write(tmp_path / "vol.tif", stack, "zlib")
    events = _events(iter_predict_files(tiny_model, [path], tmp_path / "out", PredictConfig(device="cpu", tile=64,
                                                                                              probabilities=True)))
    assert isinstance(events[-1], RunFinished) and events[-1].result.done
    assert sum(isinstance(e, PredictionSlice) for e in events) == 3
    labels, meta = read_image(tmp_path / "out" / "vol.tif")
    expected = api.predict(tiny_model, stack, PredictConfig(device="cpu", tile=64, probabilities=True))
    np.testing.assert_array_equal(labels, expected.labels)
    assert meta.scale == pytest.approx((0.05, 0.004, 0.004))
    probs = tifffile.imread(tmp_path / "out" / "vol_probabilities.tif")
    np.testing.assert_allclose(np.moveaxis(probs, 1, 0), expected.probabilities, atol=1e-6)


def _z_mean(probs: np.ndarray, w: float) -> np.ndarray:
    """(K, Z, Y, X) probabilities averaged with their z neighbours, weight w each (renormalised at the ends)."""
    out = probs.copy()
    norm = np.ones(probs.shape[1])
    out[:, 1:] += w * probs[:, :-1]
    out[:, :-1] += w * probs[:, 1:]
    norm[1:] += w
    norm[:-1] += w
    return out / norm[None, :, None, None]


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_z_average_blends_neighbouring_slices_in_memory_and_streamed(tiny_model, tmp_path, depth):
    from napari_emssl.tasks.segmentation import probabilities_to_labels

    stack = _stack(11, (depth, 80, 72))
    plain = api.predict(tiny_model, stack, PredictConfig(device="cpu", tile=64, probabilities=True))
    expected = _z_mean(plain.probabilities, 0.25)
    events = list(api.iter_predict(tiny_model, stack, PredictConfig(device="cpu", tile=64, probabilities=True, z_average=0.25)))
    result = events[-1].result
    assert events[0].info["z_average"] == 0.25
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(result.labels, np.stack([probabilities_to_labels(expected[:, z]) for z in range(depth)]))
    assert sum(isinstance(e, PredictionSlice) for e in events) == depth
    if depth > 1:
        assert not np.allclose(result.probabilities, plain.probabilities)
    path = _write(tmp_path / "vol.tif", stack, "zlib")
    list(iter_predict_files(tiny_model, [path], tmp_path / "out", PredictConfig(device="cpu", tile=64, z_average=0.25)))
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "vol.tif")[0].reshape(result.labels.shape), result.labels)


def test_z_average_leaves_single_images_alone_and_refuses_bad_weights(tiny_model):
    image = _stack(12, (80, 72))
    a = api.predict(tiny_model, image, PredictConfig(device="cpu", tile=64, probabilities=True))
    b = api.predict(tiny_model, image, PredictConfig(device="cpu", tile=64, probabilities=True, z_average=0.5))
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(InputError, match="z_average"):
            PredictConfig(z_average=bad)


def test_zarr_output_round_trip(tiny_model, tmp_path):
    stack = _stack(2)
    path = _write(tmp_path / "vol.tif", stack)
    events = _events(iter_predict_files(tiny_model, [path], tmp_path / "out", CPU, fmt="zarr"))
    assert isinstance(events[-1], RunFinished)
    out = tmp_path / "out" / "vol.ome.zarr"
    attrs = json.loads((out / ".zattrs").read_text())
    assert attrs["multiscales"][0]["axes"][0]["unit"] == "micrometer"
    lazy, meta = open_lazy(out)
    np.testing.assert_array_equal(np.asarray(lazy), api.predict(tiny_model, stack, CPU).labels)
    assert meta.scale == pytest.approx((0.05, 0.004, 0.004))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["vol.ome.zarr"]  # no temporary folder left


def test_batch_goes_on_past_broken_files_and_reports_them(tiny_model, tmp_path):
    good = [_write(tmp_path / f"g{i}.tif", _stack(i)) for i in range(2)]
    truncated = tmp_path / "t.tif"
    truncated.write_bytes(good[0].read_bytes()[:3000])
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((2, 40, 40), np.nan, np.float32), imagej=True, metadata={"axes": "ZYX"})
    garbage = tmp_path / "z.tif"
    garbage.write_bytes(b"II*\x00" + b"\xff" * 50)
    events = _events(iter_predict_files(tiny_model, [good[0], truncated, nan, garbage, good[1]], tmp_path / "out", CPU))
    summary = events[-1].result
    assert [Path(p).name for p, _ in summary.done] == ["g0.tif", "g1.tif"]
    failed = {Path(p).name: reason for p, reason in summary.failed}
    assert set(failed) == {"t.tif", "nan.tif", "z.tif"}
    assert "truncated" in failed["t.tif"] and "NaN" in failed["nan.tif"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["g0.tif", "g1.tif"]  # nothing half-written
    ends = [e for e in events if isinstance(e, FileEnded)]
    assert [e.status for e in ends] == ["done", "failed", "failed", "failed", "done"]


def test_existing_outputs_are_skipped_unless_overwrite(tiny_model, tmp_path):
    paths = [_write(tmp_path / f"a{i}.tif", _stack(i)) for i in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    (out / "a0.tif").write_bytes(b"keep me")
    summary = _events(iter_predict_files(tiny_model, paths, out, CPU))[-1].result
    assert [Path(p).name for p, _ in summary.skipped] == ["a0.tif"] and len(summary.done) == 1
    assert (out / "a0.tif").read_bytes() == b"keep me"
    summary = _events(iter_predict_files(tiny_model, paths, out, CPU, overwrite=True))[-1].result
    assert len(summary.done) == 2
    assert read_image(out / "a0.tif")[0].shape == (3, 80, 72)


def test_stop_mid_batch_keeps_finished_outputs_and_leaves_nothing_half_written(tiny_model, tmp_path):
    paths = [_write(tmp_path / f"s{i}.tif", _stack(i, (4, 80, 72))) for i in range(3)]
    out = tmp_path / "out"
    token = CancelToken()
    events = []
    for event in iter_predict_files(tiny_model, paths, out, PredictConfig(device="cpu", tile=64, batch_size=1), cancel=token):
        events.append(event)
        if isinstance(event, PredictionSlice) and event.index == 1 and len([e for e in events if isinstance(e, FileStarted)]) == 2:
            token.cancel()  # in the middle of the second file
    assert isinstance(events[-1], RunCancelled)
    assert [e.status for e in events if isinstance(e, FileEnded)] == ["done", "stopped"]
    assert sorted(p.name for p in out.iterdir()) == ["s0.tif"]  # no temporary file, no partial s1.tif
    np.testing.assert_array_equal(read_image(out / "s0.tif")[0], api.predict(tiny_model, _stack(0, (4, 80, 72)), CPU).labels)


def test_inputs_from_folders_and_globs_and_name_collisions(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        _write(tmp_path / folder / "x.tif", _stack(0, (2, 20, 20)))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    assert expand_inputs([tmp_path / "a"]) == [tmp_path / "a" / "x.tif"]
    found = expand_inputs([str(tmp_path / "*" / "*.tif")])
    assert found == [tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif"]
    outs = output_paths(found, tmp_path / "out", "segment")
    assert [o.name for o in outs] == ["a_x.tif", "b_x.tif"]
    beside = output_paths(found, None, "denoise")
    assert beside[0] == tmp_path / "a" / "x_denoised.tif"
    # results written beside the inputs by an earlier run are not inputs of the next one (unless named)
    (tmp_path / "a" / "x_segmentation.tif").write_bytes((tmp_path / "a" / "x.tif").read_bytes())
    (tmp_path / "a" / "x_denoised.ome.zarr").mkdir()
    (tmp_path / "a" / "x_denoised.ome.zarr" / ".zgroup").write_text("{}")
    assert expand_inputs([tmp_path / "a"]) == expand_inputs([str(tmp_path / "a" / "x*")]) == [tmp_path / "a" / "x.tif"]
    assert expand_inputs([tmp_path / "a" / "x_segmentation.tif"]) == [tmp_path / "a" / "x_segmentation.tif"]
    with pytest.raises(InputError, match="does not exist"):
        expand_inputs([tmp_path / "missing.tif"])
    with pytest.raises(InputError, match="No image matches"):
        expand_inputs([str(tmp_path / "*.png")])


def test_restoration_batch_keeps_scale_divided_by_factor(tmp_path, tiny_config):
    image, _, _ = make_disks(3, shape=(48, 64))
    model = api.finetune(image, config=tiny_config(task="superres", steps=1)).model
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, image.astype(np.float32), imagej=True, resolution=(1 / 0.002, 1 / 0.002), metadata={"unit": "um"})
    _events(iter_predict_files(model, [path], tmp_path / "out", PredictConfig(device="cpu")))
    result, meta = read_image(tmp_path / "out" / "img.tif")
    assert result.shape == (96, 128) and meta.scale == pytest.approx((0.001, 0.001))
    np.testing.assert_allclose(result, api.predict(model, image, PredictConfig(device="cpu")).image, atol=1e-3)


def test_dask_and_zarr_inputs_in_memory_api(tiny_model):
    da = pytest.importorskip("dask.array")
    stack = _stack(4)
    lazy = da.from_array(stack, chunks=(1, 40, 72))
    np.testing.assert_array_equal(api.predict(tiny_model, lazy, CPU).labels, api.predict(tiny_model, stack, CPU).labels)


def test_sinks_abort_leaves_nothing(tmp_path):
    sink = TiffSink(tmp_path / "r.tif", (3, 10, 10), np.uint16)
    sink.write(np.ones((10, 10)))
    sink.abort()
    zsink = ZarrSink(tmp_path / "r.ome.zarr", (3, 10, 10), np.uint8)
    zsink.write(np.ones((10, 10)))
    zsink.abort()
    assert list(tmp_path.iterdir()) == []
    sink = TiffSink(tmp_path / "r.tif", (2, 10, 10), np.uint16)
    sink.write(np.ones((10, 10)))
    with pytest.raises(ValueError, match="1 of 2 planes"):
        sink.close()  # an incomplete result is never renamed into place
    assert list(tmp_path.iterdir()) == []


class _Greedy(torch.nn.Module):
    """A 1x1 convolution that 'runs out of memory' for batches bigger than ``fits``."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        self.fits, self.calls = fits, []

    def forward(self, x):
        self.calls.append(len(x))
        if len(x) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.conv(x)


def test_out_of_memory_halves_the_batch_and_gives_the_same_result():
    batch = np.random.default_rng(0).random((8, 1, 16, 16)).astype(np.float32)
    net = _Greedy(fits=3)
    fn = TileForward(net, torch.device("cpu"), activation="softmax")
    out = fn(batch)
    reference = TileForward(_Greedy(fits=99), torch.device("cpu"))
    reference.net.load_state_dict(net.state_dict())
    np.testing.assert_allclose(out, reference(batch), atol=1e-6)
    assert fn.max_batch == 2 and fn.backoffs == 2  # 8 -> 4 -> 2, then it stays at 2
    net.calls.clear()
    fn(batch)
    assert net.calls == [2, 2, 2, 2]
    with pytest.raises(InputError, match="single tile"):
        TileForward(_Greedy(fits=0), torch.device("cpu"))(batch)


def _tiles_on_device(monkeypatch, on: bool) -> None:
    """Every TileForward made from now on cuts and blends tiles on its device (as on CUDA), or not."""
    original = TileForward.__init__

    def init(self, *args, **kwargs):
        kwargs.setdefault("on_device", on)
        original(self, *args, **kwargs)

    monkeypatch.setattr(TileForward, "__init__", init)


def test_device_tiling_gives_the_host_tilers_result(monkeypatch, tiny_model, tiny_config):
    """The CUDA path (tiles cut, run and blended on the device) run on the CPU against the host loop."""
    stack = _stack(5, shape=(2, 90, 70))
    image, _, _ = make_disks(3, shape=(48, 64))
    superres = api.finetune(image, config=tiny_config(task="superres", steps=1)).model
    denoiser = api.finetune(image, config=tiny_config(task="denoise", steps=1)).model
    config = CPU.replace(tile=48, batch_size=3, probabilities=True, tta=False)
    results = {}
    for on in (False, True):
        _tiles_on_device(monkeypatch, on)
        seg = api.predict(tiny_model, stack, config)
        results[on] = (seg.probabilities, seg.labels, api.predict(superres, image, config).image,
                       api.predict(denoiser, stack, config.replace(tta=None)).image)
        assert (TileForward(torch.nn.Identity(), torch.device("cpu")).device_fn is not None) == on
    for host, device in zip(results[False], results[True]):
        assert host.shape == device.shape and host.dtype == device.dtype
        np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-5)
    assert results[True][2].shape == (96, 128)


def test_device_tiling_halves_the_batch_on_out_of_memory_and_stops_on_cancel():
    from napari_emssl.data.tiling import Cancelled, predict_tiled

    image = np.random.default_rng(1).random((70, 50)).astype(np.float32)
    net = _Greedy(fits=2)
    on_device = TileForward(net, torch.device("cpu"), on_device=True)
    host = TileForward(_Greedy(fits=99), torch.device("cpu"))
    host.net.load_state_dict(net.state_dict())
    kwargs = dict(out_channels=2, tile=32, overlap=8, batch_size=6)
    np.testing.assert_allclose(predict_tiled(on_device, image, **kwargs), predict_tiled(host, image, **kwargs),
                               rtol=1e-5, atol=1e-6)
    assert on_device.max_batch == 1 and on_device.backoffs == 2  # 6 -> 3 -> 1
    cancel = CancelToken()
    seen = []

    def on_tile(done, total):
        seen.append(done)
        cancel.cancel()

    with pytest.raises(Cancelled):
        predict_tiled(on_device, image, on_tile=on_tile, cancel=cancel, **{**kwargs, "batch_size": 2})
    assert seen == [2]


def test_labels_are_argmax_plus_one_with_ties_to_the_lower_class():
    from napari_emssl.tasks.segmentation import probabilities_to_labels

    rng = np.random.default_rng(2)
    for probs in (rng.random((3, 33, 17)).astype(np.float32), rng.integers(0, 3, (5, 20, 20)).astype(np.float32),
                  rng.random((300, 4, 4))):
        labels = probabilities_to_labels(probs)
        np.testing.assert_array_equal(labels, np.argmax(probs, axis=0) + 1)
        assert labels.dtype == (np.uint8 if len(probs) < 256 else np.uint16)
    np.testing.assert_array_equal(probabilities_to_labels(np.zeros((1, 2, 2), np.float32)), np.ones((2, 2), np.uint8))


def test_results_are_compressed_when_integer_and_written_raw_when_float(tmp_path):
    from napari_emssl.io import write_image

    for dtype, expected in ((np.uint8, tifffile.COMPRESSION.ADOBE_DEFLATE), (np.float32, tifffile.COMPRESSION.NONE)):
        plane = np.arange(64 * 64, dtype=dtype).reshape(64, 64)
        sink = TiffSink(tmp_path / f"s_{np.dtype(dtype).name}.tif", (2, 64, 64), dtype)
        sink.write(plane)
        sink.write(plane)
        sink.close()
        write_image(tmp_path / f"w_{np.dtype(dtype).name}.tif", plane)
        for name in ("s", "w"):
            with tifffile.TiffFile(tmp_path / f"{name}_{np.dtype(dtype).name}.tif") as tif:
                assert tif.pages[0].compression == expected
                np.testing.assert_array_equal(tif.asarray()[0] if name == "s" else tif.asarray(), plane)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from napari_emssl.batch import iter_predict_files
    from napari_emssl.config import PredictConfig
    from napari_emssl.engine.model_dir import load_model
    from napari_emssl.io.lazy import open_lazy

    def status(key):  # kB; VmHWM is this process's own peak (ru_maxrss would include the parent's after fork)
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    model = load_model(sys.argv[1])
    config = PredictConfig(device="cpu", tile=128, batch_size=4, probabilities=True)
    # warm up on two slices through the same path: imports, reader/writer threads, torch's own buffers
    list(iter_predict_files(model, [sys.argv[2]], sys.argv[4] + "-warm-up", config))
    reset_peak()
    before = status("VmRSS")
    events = list(iter_predict_files(model, [sys.argv[3]], sys.argv[4], config))
    streamed = status("VmHWM") - before
    reset_peak()  # control: the same stack loaded whole must show up in the measurement
    before = status("VmRSS")
    whole = np.asarray(open_lazy(sys.argv[3])[0])
    loaded = status("VmHWM") - before
    print(json.dumps({"peak_increase_kb": streamed, "whole_stack_kb": loaded, "done": len(events[-1].result.done)}))
""")


def test_a_stack_bigger_than_the_memory_budget_is_processed_under_it(tiny_model_dir, tmp_path):
    """48 MB in, 12 MB labels + 96 MB probabilities out (the whole prediction in memory grows by
    about 160 MB); streamed, the peak memory may grow by at most 48 MB (a few slices in flight:
    the one being predicted, the next one read ahead, two waiting to be compressed and written)."""
    depth, side = 48, 512
    rng = np.random.default_rng(0)
    for name, slices in (("big.tif", depth), ("small.tif", 2)):
        with tifffile.TiffWriter(tmp_path / name, imagej=True) as tif:  # slice by slice: the test stays small too
            tif.write((rng.random((side, side), np.float32) for _ in range(slices)), shape=(slices, side, side),
                      dtype=np.float32, metadata={"axes": "ZYX"})
    budget_mb = 48
    data_mb = depth * side * side * (4 + 1 + 2 * 4) / 2**20
    assert data_mb > 3 * budget_mb
    script = tmp_path / "run.py"
    script.write_text(MEMORY_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "small.tif"),
                           str(tmp_path / "big.tif"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["done"] == 1
    assert report["whole_stack_kb"] / 1024 > 0.9 * depth * side * side * 4 / 2**20, report  # the instrument sees memory
    assert report["peak_increase_kb"] / 1024 < budget_mb, report
    labels = tifffile.imread(tmp_path / "out" / "big.tif")
    assert labels.shape == (depth, side, side)
