"""Apply a trained model to an image or stack, slice by slice, streaming the results to sinks.

One driver serves every task: the input (a numpy array, a memory-mapped TIFF, a zarr or dask
array) is read one slice at a time by a background thread while the previous slice is being
predicted, normalised with the stack's percentiles (computed once, from a subsample), cut
into overlapping tiles that go through the network in batches, blended, and handed to the
sinks (:mod:`napari_emssl.io.sinks`: memory, TIFF or OME-Zarr), which write it while the
next slice is computed. Memory is bounded by a few slices, whatever the size of the stack.

Segmentation gives labels 1..K (and, when asked, class probabilities); restoration gives
the restored image in the input's units (``keep_dtype``: in its pixel type, clipped).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .config import PredictConfig
from .data.normalize import NormStats, percentile_normalize, subsample
from .data.tiling import Cancelled, iter_tiled, tile_count
from .data.validate import check_float32_range, count_nonfinite, is_constant
from .engine.cancel import CancelToken
from .engine.events import Event, PredictionSlice, PredictionTile, RunCancelled, RunFinished, RunStarted
from .engine.model_dir import TrainedModel
from .engine.device import release_device_memory, resolve_device
from .engine.predictor import auto_batch_size, choose_tiling, forward_fn
from .errors import InputError, ModelFormatError
from .tasks.denoise_corrections import correct_leak, leak_setting, mean_correction, probed_input
from .tasks.superres import back_project
from .tasks.segmentation import probabilities_to_labels, z_neighbour_mean

NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}
RESTORATION_TASKS = ("denoise", "bgremove", "superres")
STATS_PLANES = 16  # slices sampled from a lazily read stack for its percentiles

#: ``make_sinks(specs)``: specs maps an output name ("labels", "probabilities", "image") to
#: ``(shape, dtype, axes)``; it returns a sink (see :mod:`napari_emssl.io.sinks`) for each name.
SinkFactory = Callable[[dict[str, tuple[tuple[int, ...], Any, str]]], dict[str, Any]]


# ---------------------------------------------------------------------------------------------- the input


def check_source(image: Any, name: str = "image") -> Any:
    """Refuse inputs that are not greyscale 2D images or 3D stacks of numbers (cheap: no pixel is read)."""
    if isinstance(image, np.ndarray) or not all(hasattr(image, a) for a in ("shape", "dtype", "__getitem__")):
        from .data.validate import check_image

        return check_image(np.asarray(image), name=name)
    shape, dtype = tuple(int(n) for n in image.shape), np.dtype(image.dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"The {name} has pixel type {dtype}; expected numeric grey values (integer or float).")
    if len(shape) not in (2, 3):
        raise InputError(f"The {name} has {len(shape)} dimensions (shape {shape}); expected a 2D image (Y, X) or a 3D stack (Z, Y, X).")
    if 0 in shape:
        raise InputError(f"The {name} is empty (shape {shape}); expected at least one pixel along every axis.")
    return image


def source_stats(image: Any, low: float, high: float) -> NormStats:
    """The stack's percentiles: from the whole array in memory, or from up to 16 evenly spaced slices of a lazy one."""
    if isinstance(image, np.ndarray) and not isinstance(image, np.memmap):
        return percentile_normalize(subsample(image), low, high)[1]
    if len(image.shape) == 2:
        sample = subsample(np.asarray(image[:, :]))
    else:
        depth = int(image.shape[0])
        picks = np.unique(np.linspace(0, depth - 1, min(depth, STATS_PLANES)).round().astype(int))
        per_plane = max(1, (1 << 22) // len(picks))
        sample = np.concatenate([subsample(np.asarray(image[int(z)]), per_plane) for z in picks])
    return percentile_normalize(sample, low, high)[1]


def _read_plane(image: Any, index: int | None, stats: NormStats, name: str) -> np.ndarray:
    if index is not None:
        plane = image[index]
    else:
        plane = image if isinstance(image, np.ndarray) else image[:, :]
    plane = np.asarray(plane)
    bad = count_nonfinite(plane)
    if bad:
        where = f" (slice {index})" if index is not None else ""
        raise InputError(f"The {name}{where} contains {bad} pixels that are NaN or infinite; expected finite values: "
                         "replace them (e.g. with 0) first.")
    check_float32_range(plane, name)
    return percentile_normalize(plane, stats=stats)[0]


# ---------------------------------------------------------------------------------------------- per-task planes


def plane_tiling(model: TrainedModel, config: PredictConfig, device) -> tuple[int, int, int]:
    """``(size_multiple, tile, overlap)`` for predicting with ``model`` on ``device`` (:meth:`PredictConfig.tile_on`)."""
    net = model.net
    multiple = int(model.meta.get("size_multiple", net.size_multiple))
    tile, overlap = choose_tiling(int(model.meta.get("receptive_field", net.receptive_field)),
                                  config.tile_on(device.type, getattr(net, "preferred_tile", None)), multiple, config.overlap)
    return multiple, tile, overlap


class _Planes:
    """What a task does to one normalised plane; ``run`` is a generator of finished-tile counts returning the outputs."""

    def __init__(self, model: TrainedModel, config: PredictConfig, device, batch_size: int) -> None:
        self.multiple, self.tile, self.overlap = plane_tiling(model, config, device)
        self.batch_size = batch_size
        self.config = config

    def flush(self) -> dict[str, np.ndarray] | None:
        """Outputs still held back once every plane has run (None: each plane's came with its run)."""
        return None

    def _tiled(self, fn, grid: np.ndarray, channels: int, cancel):
        return (yield from iter_tiled(fn, grid, out_channels=channels, tile=self.tile, overlap=self.overlap,
                                      batch_size=self.batch_size, size_multiple=self.multiple, cancel=cancel))


class SegmentPlanes(_Planes):
    def __init__(self, model: TrainedModel, config: PredictConfig, device, batch_size: int) -> None:
        super().__init__(model, config, device, batch_size)
        self.k = int(model.meta["out_channels"])
        self.fn = forward_fn(model.net, device, amp=config.amp)
        self.labels_dtype = probabilities_to_labels(np.zeros((self.k, 1), np.float32)).dtype
        self._window: tuple[np.ndarray | None, np.ndarray] | None = None  # z_average: (slice before, slice held back)

    def specs(self, shape: tuple[int, ...], dtype) -> dict[str, tuple]:
        out = {"labels": (shape, self.labels_dtype, "YX" if len(shape) == 2 else "ZYX")}
        if self.config.probabilities:
            out["probabilities"] = ((self.k,) + shape if len(shape) == 2 else (shape[0], self.k) + shape[1:], np.float32,
                                    "CYX" if len(shape) == 2 else "ZCYX")
        return out

    def tiles(self, plane_shape: tuple[int, int]) -> int:
        return tile_count(plane_shape, self.tile, self.overlap)

    def run(self, plane: np.ndarray, cancel):
        """The outputs of this plane, or with ``z_average`` those of the plane before (None for the first; see flush)."""
        probs = yield from self._tiled(self.fn, plane, self.k, cancel)
        if not self.config.z_average:
            return self._outputs(probs)
        previous, self._window = self._window, (self._window[1] if self._window else None, probs)
        if previous is None:  # the first plane: held back until its next neighbour is known
            return None
        return self._outputs(self._z_mean(previous[0], previous[1], probs))

    def flush(self):
        """With ``z_average``: the outputs of the last plane (its next neighbour does not exist), else None."""
        window, self._window = self._window, None
        if window is None:
            return None
        return self._outputs(self._z_mean(window[0], window[1], None))

    def _z_mean(self, before: np.ndarray | None, probs: np.ndarray, after: np.ndarray | None) -> np.ndarray:
        return z_neighbour_mean(probs, before, after, float(self.config.z_average))

    def _outputs(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        out = {"labels": probabilities_to_labels(probs)}
        if self.config.probabilities:
            out["probabilities"] = probs
        return out


class RestorePlanes(_Planes):
    def __init__(self, model: TrainedModel, config: PredictConfig, device, batch_size: int) -> None:
        super().__init__(model, config, device, batch_size)
        from .restoration import DIHEDRAL

        self.task = model.task
        if self.task not in RESTORATION_TASKS:
            raise ModelFormatError(f"this model was trained for {self.task!r}, which is not a restoration task")
        if int(model.meta.get("out_channels", 1)) != 1:
            raise ModelFormatError(f"a {self.task} model has one output channel, this one has {model.meta['out_channels']}")
        self.factor = int(model.meta.get("factor", 1)) if self.task == "superres" else 1
        self.fn = forward_fn(model.net, device, amp=config.amp, activation="none")
        # self-supervised denoising: sigma (px) of the residual's low-pass added back (tasks/denoise_corrections.py; 0 or absent: none)
        self.mean_correction = float(model.meta.get("mean_correction", 0.0)) if self.task == "denoise" else 0.0
        # self-supervised denoising: share of the own-pixel weight taken out (tasks/denoise_corrections.py; 0 or absent:
        # none) or "auto": chosen per slice; the shares used, one per slice, in leak_shares
        self.leak_correction = leak_setting(model.meta.get("leak_correction", 0.0)) if self.task == "denoise" else 0.0
        paired = bool(((model.meta.get("lineage") or {}).get("finetune") or {}).get("paired"))
        if config.leak_correction is not None and self.task == "denoise" and not paired:  # the user's choice at Apply
            self.leak_correction = leak_setting(config.leak_correction)
        self.leak_shares: list[float] = []
        # self-supervised super-resolution: steps of back-projection onto the input (tasks/superres.py; 0 or absent: none)
        self.back_projection = int(model.meta.get("back_projection", 0)) if self.task == "superres" else 0
        self.views = DIHEDRAL[:1]  # set_shape: the views the config asks for (restoration.views_for)
        self.stats: NormStats | None = None
        self.dtype = None
        self.clipped = 0

    def set_shape(self, shape: tuple[int, ...]) -> None:
        from .restoration import views_for

        self.views = views_for(self.config, shape)

    def specs(self, shape: tuple[int, ...], dtype) -> dict[str, tuple]:
        self.dtype = np.dtype(dtype) if self.config.keep_dtype else np.dtype(np.float32)
        out_shape = tuple(shape[:-2]) + (shape[-2] * self.factor, shape[-1] * self.factor)
        return {"image": (out_shape, self.dtype, "YX" if len(shape) == 2 else "ZYX")}

    def tiles(self, plane_shape: tuple[int, int]) -> int:
        f = self.factor
        shapes = [(plane_shape[1] * f, plane_shape[0] * f) if k % 2 else (plane_shape[0] * f, plane_shape[1] * f)
                  for k, _ in self.views]
        if self.leak_correction:  # one more pass, on the probed input (denoising: the plane's own size)
            shapes.append(tuple(plane_shape))
        return sum(tile_count(s, self.tile, self.overlap) for s in shapes)

    def _view(self, plane: np.ndarray, k: int, flip: bool, done: int, cancel):
        """The network's output for one view of ``plane``, turned back; yields the tiles done (``done`` + this view's)."""
        from .restoration import _dihedral, _dihedral_inverse, _network_input

        grid, run = _network_input(_dihedral(plane, k, flip), self.fn, self.task, self.factor)
        steps = self._tiled(run, grid, 1, cancel)
        while True:
            try:
                view_done, _ = next(steps)
            except StopIteration as stop:
                return _dihedral_inverse(stop.value[0], k, flip), view_done
            yield done + view_done, None

    def run(self, plane: np.ndarray, cancel):
        from .restoration import denormalize, to_dtype

        acc, plain, done = None, None, 0
        for k, flip in self.views:  # the identity view first
            back, view_done = yield from self._view(plane, k, flip, done, cancel)
            plain = back if plain is None else plain
            acc = back if acc is None else acc + back
            done += view_done
        restored = acc / len(self.views)
        if self.leak_correction:
            probing, probe = probed_input(plane)
            probed, _ = yield from self._view(probing, 0, False, done, cancel)
            restored, share = correct_leak(restored, plane, plain, probed, probe, self.leak_correction)
            self.leak_shares.append(round(share, 4))
        if self.mean_correction:
            restored = mean_correction(restored, plane, self.mean_correction)
        if self.back_projection:
            restored = back_project(restored, plane, self.factor, self.back_projection)
        restored = denormalize(restored, self.stats, self.task)
        if self.config.keep_dtype:
            restored, clipped = to_dtype(restored, self.dtype)
            self.clipped += clipped
        return {"image": restored}


# ---------------------------------------------------------------------------------------------- the driver


def iter_apply(
    model: TrainedModel,
    image: Any,
    config: PredictConfig,
    make_sinks: SinkFactory,
    *,
    cancel: CancelToken | None = None,
    name: str = "image",
) -> Iterator[Event]:
    """Apply ``model`` to ``image`` slice by slice and write every output plane to the sinks ``make_sinks`` opens.

    Yields ``RunStarted``, ``PredictionTile`` after every batch of tiles, ``PredictionSlice``
    after every finished slice, and ends with ``RunFinished`` (result: a dict with ``sinks``,
    ``seconds``, ``info``) or ``RunCancelled``. The sinks are closed when the run finishes and
    aborted (nothing left under a final name) when it is stopped or fails.
    """
    image = check_source(image, name)
    shape = tuple(int(n) for n in image.shape)
    device = resolve_device(config.device)
    net = model.net.to(device).eval()
    if config.compile and device.type == "cuda":
        net = torch.compile(net)
    try:
        yield from _apply(model, net, image, shape, config, make_sinks, device, cancel, name)
    finally:
        model.net.to("cpu", memory_format=torch.contiguous_format)  # as it came (prediction may use channels_last)
        release_device_memory(device)


def _apply(model, net, image, shape, config, make_sinks, device, cancel, name) -> Iterator[Event]:
    _, tile, _ = plane_tiling(model, config, device)
    batch = auto_batch_size(net, device, tile, amp=config.amp, default=config.batch_size) if config.auto_batch else config.batch_size
    wrapped = TrainedModel(net=net, meta=model.meta) if net is not model.net else model
    if len(shape) == 2 and config.z_average:
        config = config.replace(z_average=0.0)  # one image: no neighbours
    planes = SegmentPlanes(wrapped, config, device, batch) if model.task == "segment" else RestorePlanes(wrapped, config, device, batch)
    normalization = model.meta.get("normalization") or NORMALIZATION
    stats = source_stats(image, float(normalization["low"]), float(normalization["high"]))
    if model.task != "segment":
        planes.stats = stats
        planes.set_shape(shape)
        if _constant(image):
            raise InputError(f"The {name} is constant; there is no structure to restore.")
    indices: list[int | None] = [None] if len(shape) == 2 else list(range(shape[0]))
    per_plane = planes.tiles(shape[-2:])
    total = per_plane * len(indices)
    info = {"task": model.task, "tile": planes.tile, "overlap": planes.overlap, "batch_size": batch, "slices": len(indices),
            "factor": getattr(planes, "factor", 1),
            "tta": model.task != "segment" and len(planes.views) == 8,
            "views": len(planes.views) if model.task != "segment" else 1,
            "z_average": float(config.z_average) if model.task == "segment" else 0.0,
            "mean_correction": getattr(planes, "mean_correction", 0.0),
            "leak_correction": getattr(planes, "leak_correction", 0.0)}
    yield RunStarted(kind="predict", total_steps=total, device=str(device), info=info)
    started = time.perf_counter()
    sinks = make_sinks(planes.specs(shape, image.dtype))
    done = 0
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emssl-read")
    try:
        pending = reader.submit(_read_plane, image, indices[0], stats, name)
        for position, index in enumerate(indices):
            plane = pending.result()
            if position + 1 < len(indices):  # read the next slice while this one is predicted
                pending = reader.submit(_read_plane, image, indices[position + 1], stats, name)
            steps = planes.run(plane, cancel)
            while True:
                try:
                    plane_done, _ = next(steps)
                except StopIteration as stop:
                    outputs = stop.value
                    break
                yield PredictionTile(done=done + plane_done, total=total)
            done += per_plane
            if outputs is not None:  # None: held back until the next slice is known (z_average)
                for key, sink in sinks.items():
                    sink.write(outputs[key])
            yield PredictionSlice(index=position, count=len(indices))
        outputs = planes.flush()
        if outputs is not None:
            for key, sink in sinks.items():
                sink.write(outputs[key])
    except Cancelled:
        _abort(sinks)
        yield RunCancelled(step=done, seconds=time.perf_counter() - started)
        return
    except BaseException:
        _abort(sinks)
        raise
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
    try:
        for sink in sinks.values():
            sink.close()
    except BaseException:
        _abort(sinks)  # a result is complete only with all its outputs
        raise
    if getattr(planes.fn, "backoffs", 0):
        info["oom_backoffs"] = planes.fn.backoffs
        info["batch_size"] = planes.fn.max_batch
    if model.task != "segment" and config.keep_dtype:
        info["clipped_pixels"] = planes.clipped
    if getattr(planes, "leak_shares", None):
        info["leak_shares"] = planes.leak_shares
    seconds = time.perf_counter() - started
    info["megapixels_per_s"] = float(np.prod(shape)) / 1e6 / max(seconds, 1e-9)
    yield RunFinished(result={"sinks": sinks, "seconds": seconds, "info": info,
                              "scale_factor": getattr(planes, "factor", 1)}, seconds=seconds)


def _abort(sinks: dict[str, Any]) -> None:
    for sink in sinks.values():
        try:
            sink.abort()
        except Exception:  # noqa: BLE001 - cleaning up after the real error, which is re-raised
            pass


def _constant(image: Any) -> bool:
    if isinstance(image, np.ndarray):
        return is_constant(image)
    return is_constant(subsample(np.asarray(image[0] if len(image.shape) == 3 else image[:, :])))
