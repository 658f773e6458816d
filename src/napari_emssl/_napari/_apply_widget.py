"""The "Apply" dock widget: apply a trained model to one or more image layers.

The model is either the one just trained in this viewer's Fine-tune widget (found among the
viewer's docked widgets at the moment Apply is pressed) or a model folder. A segmentation
model gives each source image a Labels layer ``"<source> segmentation"`` with the source's
scale and translate (and, when asked, one probability Image layer per class); a restoration
model an Image layer ``"<source> denoised"`` / ``"background removed"`` / ``"superres xF"``
(super-resolution: pixel size divided by F, so it overlays the source), with the source's
metadata. With a target layer (one source image), PSNR and SSIM are shown. Re-running
replaces the results' data. One image that fails is reported and the others go on.

Layers whose data is held lazily (dask or zarr, e.g. a big stack opened with a zarr reader)
are read one slice at a time and their result is streamed into an OME-Zarr image in
``results_folder``, shown as a layer that fills slice by slice. In "files" mode the model
is applied to a folder or glob of images and the results are written to disk
(:mod:`napari_emssl.batch`), with per-file and overall progress and a summary.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from .. import api
from ..batch import iter_predict_files, iter_predict_to_zarr
from ..config import PredictConfig
from ..data.validate import check_image
from ..engine.events import (
    Event,
    FileEnded,
    FileStarted,
    OutputOpened,
    PredictionSlice,
    PredictionTile,
    RunCancelled,
    RunFinished,
    RunStarted,
)
from ..engine.model_dir import TrainedModel, load_model
from ..errors import EmsslError, InputError
from ..prediction import check_source
from ._apply_files import FilesPanel, file_progress_text, summary_text
from ._apply_options import PredictOptions
from ._apply_results import show_result, show_streamed
from ._model_info import describe_model, read_model_meta
from ._controls import FolderEdit, LayerCombo, LayerList, RunControls, device_combo, format_seconds
from ._layers import (
    docked_widgets,
    find_layer,
    image_source,
    result_kind,
    result_name,
    snapshot_image,
    spatial_kwargs,
)
from ._worker import Failure, RunBridge, StopsRunOnClose, report_failure, show_error

SOURCES = (("model just trained (Fine-tune widget)", "trained"), ("model folder", "folder"))
MODES = (("image layers", "layers"), ("files: a folder or glob", "files"))
DEFAULT_RESULTS = Path.home() / ".napari-emssl" / "results"


@dataclass(frozen=True)
class SourceEvent:
    """A core event of the prediction of source image number ``index`` (plain data)."""

    index: int
    event: Event


class ApplyWidget(StopsRunOnClose, QWidget):
    """Apply a model to image layers; results become Labels (segmentation) or Image (restoration) layers."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        #: extra PredictConfig fields for scripts and tests, e.g. {"tile": 128}
        self.config_overrides: dict = {}
        #: where results of lazily held layers are streamed (OME-Zarr), shown as they fill
        self.results_folder: Path = DEFAULT_RESULTS
        self._run: dict | None = None
        self._build()
        self.bridge = RunBridge({SourceEvent: self._on_source_event, Failure: self._on_failure,
                                 FileStarted: self._on_file_event, FileEnded: self._on_file_event,
                                 PredictionTile: self._on_file_tile, RunFinished: self._on_batch_end,
                                 RunCancelled: self._on_batch_end},
                                on_done=self._on_done, parent=self)
        self.refresh_model_info()

    def _build(self) -> None:
        self.source_combo = QComboBox(self)
        for text, value in SOURCES:
            self.source_combo.addItem(text, value)
        self.folder = FolderEdit("model folder, or a bioimage.io package (.zip) made by napari-emssl", "Model folder", self)
        self.folder.setVisible(False)
        self.model_info = QLabel(self)
        self.model_info.setWordWrap(True)
        self.source_combo.currentIndexChanged.connect(lambda _: self.refresh_model_info())
        self.folder.changed.connect(lambda _: self.refresh_model_info())
        self.mode_combo = QComboBox(self)
        for text, value in MODES:
            self.mode_combo.addItem(text, value)
        self.mode_combo.setToolTip("Apply to image layers of this viewer, or to image files on disk (results written "
                                   "to disk, not opened)")
        self.images = LayerList(self.viewer, Image, self)
        self.images.setToolTip("The image layers to apply the model to (Ctrl/Shift-click to choose several)")
        self.all_button = QPushButton("All", self)
        self.all_button.setToolTip("Choose every image layer")
        self.all_button.clicked.connect(lambda: self.images.select_layers(list(self.viewer.layers)))
        self.images_row = QWidget(self)
        images_layout = QHBoxLayout(self.images_row)
        images_layout.setContentsMargins(0, 0, 0, 0)
        images_layout.addWidget(self.images)
        images_layout.addWidget(self.all_button)
        self.files = FilesPanel(self)
        self.mode_combo.currentIndexChanged.connect(lambda _: self._show_mode())
        self.options = PredictOptions(self)
        self.probabilities, self.z_average = self.options.probabilities, self.options.z_average
        self.keep_dtype, self.tta, self.leak = self.options.keep_dtype, self.options.tta, self.options.leak
        self.target_combo = LayerCombo(self.viewer, Image, self, none_text="none")
        self.target_combo.setToolTip("Restoration: a clean or high-resolution image of the one chosen source, "
                                     "to score the result against (PSNR, SSIM)")
        self.device_combo = device_combo(self)
        form = QFormLayout()
        form.addRow("Model", self.source_combo)
        form.addRow("", self.folder)
        form.addRow("", self.model_info)
        form.addRow("Apply to", self.mode_combo)
        form.addRow("Images", self.images_row)
        self.files.add_to(form)
        self.options.add_to(form)
        form.addRow("Score against", self.target_combo)
        form.addRow("Device", self.device_combo)
        self.controls = RunControls("Apply", self)
        self.controls.start_button.clicked.connect(self.start)
        self.controls.stop_button.clicked.connect(self.stop)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.controls)
        layout.addStretch(1)
        self._form = form
        self._show_mode()

    def mode(self) -> str:
        return self.mode_combo.currentData()

    def _show_mode(self) -> None:
        files = self.mode() == "files"
        self._form.setRowVisible(self.images_row, not files)
        self.files.set_visible(self._form, files)
        self.target_combo.setEnabled(not files)
        self.options.show_files_mode(files)

    # ------------------------------------------------------------------ the model

    def trained_model(self) -> TrainedModel | None:
        """The model last trained by a Fine-tune widget docked in this viewer, if any."""
        for widget in docked_widgets(self.viewer):
            model = getattr(widget, "trained_model", None)
            if isinstance(model, TrainedModel):
                return model
        return None

    def refresh_model_info(self) -> None:
        """Describe the chosen model under the model combo (called again when a training ends)."""
        use_folder = self.source_combo.currentData() == "folder"
        self.folder.setVisible(use_folder)
        try:
            if use_folder:
                text = describe_model(read_model_meta(self.folder.path()))
            else:
                model = self.trained_model()
                text = describe_model(model.meta) if model else "No model trained yet: use EM SSL › Fine-tune first."
        except EmsslError as exc:
            text = str(exc)
        self.model_info.setText(text)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.refresh_model_info()
        super().showEvent(event)

    # ------------------------------------------------------------------ actions

    def config(self) -> PredictConfig:
        values: dict[str, Any] = dict(device=self.device_combo.currentText(), **self.options.values())
        values.update(self.config_overrides)
        return PredictConfig(**values)

    def start(self) -> bool:
        """Check the choices here (main thread), then apply the model in a worker."""
        if self.bridge.running:
            return False
        try:
            if self.mode() == "files":
                return self._start_files()
            model, jobs, config, target, meta = self._prepare()
            task, factor = meta.get("task", "segment"), int(meta.get("factor", 1))
        except EmsslError as exc:
            show_error(str(exc))
            self.controls.set_status(str(exc))
            return False
        self._run = {"names": [j[0] for j in jobs], "spatial": [j[2] for j in jobs], "metadata": [j[3] for j in jobs],
                     "done": 0, "failed": [], "verb": "segmented" if task == "segment" else "restored",
                     "streamed": {}, "task": task, "factor": factor}
        self.controls.set_running(True)
        self.controls.set_progress(0, 1, "starting…")
        self.controls.set_status(f"Applying the model to {len(jobs)} image{'s' if len(jobs) != 1 else ''}…")
        images = [(name, data) for name, data, _, _ in jobs]
        folder = Path(self.results_folder)

        def make_run(token):
            net = model if isinstance(model, TrainedModel) else load_model(model)
            kind = result_kind(net.task, int(net.meta.get("factor", 1)))
            for index, (name, image) in enumerate(images):
                try:
                    if isinstance(image, np.ndarray):
                        events = api.iter_predict(net, image, config, target=target, cancel=token)
                    else:  # held lazily: streamed to disk slice by slice, shown while it fills
                        path = folder / f"{name} {kind}.ome.zarr"
                        events = iter_predict_to_zarr(net, image, path, config, cancel=token, name=result_name(name, kind))
                    for event in events:
                        yield SourceEvent(index, event)
                        if isinstance(event, RunCancelled):
                            return
                except EmsslError as exc:  # this image fails; the others go on
                    yield SourceEvent(index, Failure(str(exc), expected=True))
                except Exception as exc:  # noqa: BLE001 - reported, and the others go on
                    yield SourceEvent(index, Failure(f"{type(exc).__name__}: {exc}", expected=False,
                                                     details=traceback.format_exc()))

        self.bridge.start(make_run)
        return True

    def _start_files(self) -> bool:
        if self.source_combo.currentData() == "folder":
            model: TrainedModel | str = self.folder.path()
            read_model_meta(model)
        else:
            model = self.trained_model()
            if model is None:
                raise InputError("No model has been trained in this viewer yet: train one with EM SSL › Fine-tune, "
                                 "or choose a model folder.")
        job, config = self.files.job(), self.config()
        self._run = {"files": True, "file": None}
        self.controls.set_running(True)
        self.controls.set_progress(0, 1, "starting…")
        self.controls.set_status(f"Applying the model to {job.inputs[0]}…")

        def make_run(token):
            yield from iter_predict_files(model, job.inputs, job.out_dir, config, fmt=job.fmt, overwrite=job.overwrite,
                                          cancel=token)

        self.bridge.start(make_run)
        return True

    def _prepare(self) -> tuple[TrainedModel | str, list[tuple[str, Any, dict, dict]], PredictConfig, Any, dict]:
        if self.source_combo.currentData() == "folder":
            model: TrainedModel | str = self.folder.path()
            meta = read_model_meta(model)  # cheap checks here; the weights are checked in the worker
        else:
            model = self.trained_model()
            if model is None:
                raise InputError("No model has been trained in this viewer yet: train one with EM SSL › Fine-tune, "
                                 "or choose a model folder.")
            meta = model.meta
        layers = self.images.selected_layers()
        if not layers:
            raise InputError("Choose at least one image layer to apply the model to.")
        config = self.config()
        jobs = [(layer.name, _layer_pixels(layer), spatial_kwargs(layer), dict(layer.metadata)) for layer in layers]
        target = None
        target_layer = self.target_combo.layer()
        if target_layer is not None and meta.get("task", "segment") != "segment":
            if len(layers) != 1:
                raise InputError("A target scores one image: choose a single image layer, or set the target to none.")
            if not isinstance(jobs[0][1], np.ndarray):
                raise InputError("A target scores an image held in memory; this layer is read lazily slice by slice.")
            target = check_image(snapshot_image(target_layer), name=f"target {target_layer.name!r}")
        return model, jobs, config, target, meta

    def stop(self) -> None:
        if self.bridge.running and self._run is not None and not self._run.get("ended"):
            self.bridge.stop()
            self.controls.stop_button.setEnabled(False)
            self.controls.set_status("Stopping…")

    # ------------------------------------------------------------------ events (main thread)

    def _on_source_event(self, item: SourceEvent) -> None:
        run, event = self._run, item.event
        if run is None:
            return
        name, count = run["names"][item.index], len(run["names"])
        where = f"{name} ({item.index + 1}/{count})" if count > 1 else name
        if isinstance(event, RunStarted):
            self.controls.set_progress(0, event.total_steps, f"{where}: tile 0 / {event.total_steps}")
        elif isinstance(event, PredictionTile):
            self.controls.set_progress(event.done, event.total, f"{where}: tile {event.done} / {event.total}")
        elif isinstance(event, OutputOpened):
            source = find_layer(self.viewer, name, Image)
            run["streamed"][item.index] = show_streamed(
                self.viewer, event.path, event.key, name, run["task"], run["factor"], run["spatial"][item.index],
                run["metadata"][item.index], tuple(source.contrast_limits) if source is not None else (0.0, 1.0))
        elif isinstance(event, PredictionSlice):
            layer = run["streamed"].get(item.index)
            if layer is not None and layer in self.viewer.layers:
                layer.refresh()
        elif isinstance(event, RunFinished):
            if item.index in run["streamed"]:
                scores = f"; written to {run['streamed'][item.index].metadata.get('emssl_path')}"
            else:
                scores = show_result(self.viewer, name, event.result, run["spatial"][item.index], run["metadata"][item.index])
            run["done"] += 1
            self._ended_one(item.index)
            self.controls.set_status(f"{run['verb'].capitalize()} {run['done']} of {count} image{'s' if count != 1 else ''} "
                                     f"(last: {name!r} in {format_seconds(event.seconds)}{scores}){self._failures_text()}.")
        elif isinstance(event, Failure):
            run["failed"].append((name, event.message))
            self._ended_one(item.index)
            report_failure(event, f"applying the model to {name!r}")
            self.controls.set_status(f"{run['verb'].capitalize()} {run['done']} of {count} image{'s' if count != 1 else ''}"
                                     f"{self._failures_text()}.")
        elif isinstance(event, RunCancelled):
            run["ended"] = True
            self.controls.set_status(f"Stopped: {run['done']} of {count} image{'s' if count != 1 else ''} {run['verb']}; "
                                     "the others are unchanged.")

    def _ended_one(self, index: int) -> None:
        run = self._run
        run["ended"] = index == len(run["names"]) - 1

    def _failures_text(self) -> str:
        failed = self._run["failed"]
        if not failed:
            return ""
        return f"; {len(failed)} failed: " + "; ".join(f"{name!r}: {message}" for name, message in failed)

    # ------------------------------------------------------------------ files mode (main thread)

    def _on_file_event(self, event: FileStarted | FileEnded) -> None:
        if self._run is None:
            return
        self._run["file"] = event
        if isinstance(event, FileStarted):
            self.controls.set_progress(event.index, event.count, file_progress_text(event))
        else:
            self.controls.set_progress(event.index + 1, event.count, file_progress_text(event) + f" {event.status}")

    def _on_file_tile(self, event: PredictionTile) -> None:
        current = self._run.get("file") if self._run else None
        if current is not None:
            self.controls.set_progress(event.done, event.total, f"{file_progress_text(current)} · tile {event.done} / "
                                                                f"{event.total}")

    def _on_batch_end(self, event: RunFinished | RunCancelled) -> None:
        if self._run is None:
            return
        self._run["ended"] = True
        summary = event.result
        text = summary_text(summary, stopped=isinstance(event, RunCancelled))
        if summary.failed:
            show_error(text)
        self.controls.set_status(text)

    def _on_failure(self, failure: Failure) -> None:
        if self._run is not None:
            self._run["ended"] = True
        self.controls.set_status(report_failure(failure, "applying the model"))

    def _on_done(self) -> None:
        self.controls.set_running(False)
        self._run = None


def _layer_pixels(layer) -> Any:
    """A snapshot of an in-memory layer, or the lazily held data itself (checked without reading pixels)."""
    data = image_source(layer)
    if isinstance(data, np.ndarray):
        return check_image(data, name=f"image {layer.name!r}")
    return check_source(data, name=f"image {layer.name!r}")
