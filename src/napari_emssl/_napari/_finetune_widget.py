"""The "Fine-tune" dock widget: train a network on the user's image, with a live loss plot and
a live preview layer: segmentation from the strokes painted in a Labels layer, or restoration
(denoising, noise and background removal, super-resolution) from the image itself or a
paired target image layer.

The widget only builds a :class:`~napari_emssl.config.FinetuneConfig`, snapshots the layer
data and runs :func:`napari_emssl.api.iter_finetune` through :class:`._worker.RunBridge`;
its event handlers update the progress bar, the loss plot and the preview layer. The
trained model stays on the widget (:attr:`FinetuneWidget.trained_model`), where the Apply
widget finds it. A model pretrained by the Pretrain widget docked in the same viewer (its
``result_dir``) is offered as a starting point ("pretrained: <folder>").
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .. import api, zoo
from ..config import FinetuneConfig
from ..data.labels import check_trainable
from ..data.validate import check_image, check_labels
from ..engine.events import Preview, RunCancelled, RunFinished, RunStarted, StepEnd
from ..engine.model_dir import TrainedModel
from ..errors import InputError
from ..models import DEFAULT_SEGMENT_ARCH, list_models
from ._controls import (
    FolderEdit,
    LayerCombo,
    RunControls,
    advanced_section,
    device_combo,
    format_seconds,
    preview_spin_box,
    spin_box,
)
from ._export_button import ExportButton
from ._layers import (
    class_colormap,
    current_slice,
    result_name,
    snapshot_image,
    snapshot_labels,
    spatial_kwargs,
    upsert_labels,
    upsert_restored,
)
from ._init_choice import INITS, ChoosesInit
from ._loss_plot import LossPlot
from ._task_controls import TaskRows
from ._worker import EndsTrainingRun, Failure, RunBridge, StopsRunOnClose, show_error, show_info



class FinetuneWidget(ChoosesInit, EndsTrainingRun, StopsRunOnClose, QWidget):
    """Fine-tune a network: segmentation on painted labels (0 unpainted, 1 background, 2.. classes) or restoration."""

    run_noun = "fine-tuning"
    kept_on_stop = "the model trained so far is kept"

    model_trained = Signal(object)  # the TrainedModel, once a run has finished or was stopped

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        #: the model of the last run (finished, or stopped: what was trained so far is kept)
        self.trained_model: TrainedModel | None = None
        self.trained_source: str | None = None
        #: extra FinetuneConfig fields for scripts and tests, e.g. {"arch_kwargs": {"base_channels": 4}}
        self.config_overrides: dict = {}
        self._run: dict | None = None  # plain data about the current run (source name, shape, spatial)
        self._preview: np.ndarray | None = None
        self._build()
        self.bridge = RunBridge(
            {RunStarted: self._on_started, StepEnd: self._on_step, Preview: self._on_preview,
             RunFinished: self._on_finished, RunCancelled: self._on_cancelled, Failure: self._on_failure},
            on_done=self._on_done, parent=self,
        )
        self.loss_plot.follow_theme(self.viewer)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.image_combo = LayerCombo(self.viewer, Image, self)
        self.labels_combo = LayerCombo(self.viewer, Labels, self)
        new_labels = QToolButton(self)
        new_labels.setText("+")
        new_labels.setToolTip("Add an empty Labels layer on the image, ready to paint")
        new_labels.clicked.connect(self.add_labels_layer)
        labels_box = QWidget(self)
        labels_row = QHBoxLayout(labels_box)
        labels_row.setContentsMargins(0, 0, 0, 0)
        labels_row.addWidget(self.labels_combo, 1)
        labels_row.addWidget(new_labels)
        labels_label = QLabel("Labels", self)
        self.task_rows = TaskRows(self.viewer, self)
        hint = self.task_rows.hint
        hint.setToolTip("Label values: 0 = not painted (ignored), 1 = background, 2, 3, … = the structures to segment. "
                        "Predictions use the same values, so they can be corrected and fed back.")

        self.arch_combo = QComboBox(self)
        for info in list_models():
            self.arch_combo.addItem(info.name)
            self.arch_combo.setItemData(self.arch_combo.count() - 1, info.description, 3)  # 3 = ToolTipRole
        self.arch_combo.setCurrentText(DEFAULT_SEGMENT_ARCH)
        self.arch_info = QLabel(self)
        self.arch_combo.currentTextChanged.connect(self._describe_arch)
        self.init_combo = QComboBox(self)
        for text, value in INITS:
            self.init_combo.addItem(text, value)
        self.init_folder = FolderEdit("model folder to continue from", "Model folder to start from", self)
        self.init_folder.setVisible(False)
        self.init_combo.currentIndexChanged.connect(self._on_init_changed)
        self.steps_spin = spin_box(QSpinBox(self), 1, 1_000_000, FinetuneConfig.DEFAULT_STEPS)
        self.device_combo = device_combo(self)
        self.out_folder = FolderEdit("optional: save the model in this folder", "Save the model in", self)

        defaults = FinetuneConfig()
        self.batch_spin = spin_box(QSpinBox(self), 1, 512, defaults.batch_size)
        self.patch_spin = spin_box(QSpinBox(self), 16, 4096, defaults.patch_size, step=16)
        self.lr_spin = spin_box(QDoubleSpinBox(self), 1e-5, 0.5, defaults.lr, step=1e-4, decimals=5)
        self.preview_spin = preview_spin_box(self, defaults.preview_every_s)
        advanced = advanced_section(self, [("Batch size", self.batch_spin), ("Patch size", self.patch_spin),
                                           ("Learning rate", self.lr_spin), ("Preview every", self.preview_spin)])

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow(labels_label, labels_box)
        form.addRow("", hint)
        form.addRow("Network", self.arch_combo)
        form.addRow("", self.arch_info)
        form.addRow("Start from", self.init_combo)
        form.addRow("", self.init_folder)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Device", self.device_combo)
        form.addRow("Save to", self.out_folder)

        self.controls = RunControls("Start training", self)
        self.controls.start_button.clicked.connect(self.start)
        self.controls.stop_button.clicked.connect(self.stop)
        self.loss_plot = LossPlot(self)
        self.save_button = QPushButton("Save model…", self)
        self.save_button.setToolTip("Write the trained model (model.json + model.safetensors) into a folder")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(lambda: self.save_model())
        self.export_button = ExportButton(lambda: self.trained_model, self)

        self.task_rows.add_to(form, (labels_label, labels_box))
        self.task_rows.task_changed.connect(self._on_task_changed)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(advanced)
        layout.addWidget(self.controls)
        layout.addWidget(self.loss_plot)
        saving = QHBoxLayout()
        saving.addWidget(self.save_button)
        saving.addWidget(self.export_button)
        layout.addLayout(saving)
        self.image_combo.layer_changed.connect(self._match_labels)
        self._match_labels(self.image_combo.layer())
        self._describe_arch(self.arch_combo.currentText())

    def _on_task_changed(self, task: str) -> None:
        self.steps_spin.setValue(self.task_rows.default_steps())
        self._describe_arch(self.arch_combo.currentText())

    def _describe_arch(self, name: str) -> None:
        info = next((m for m in list_models() if m.name == name), None)
        if info is None:
            self.arch_info.setText("")
            return
        task = self.task_rows.task()
        entry = zoo.bundled_for(task, name, dict(info.default_kwargs))
        if entry is not None:
            weights = f"bundled {entry.method} pretrained weights"
        elif others := zoo.bundled_for_network(name, dict(info.default_kwargs)):
            weights = f"bundled {others[0].method} weights not used for {task}: starts from random"
            self.arch_info.setToolTip(others[0].card.get("task_note") or "")
        else:
            weights = "no bundled pretrained weights: starts from random"
        self.arch_info.setText(f"receptive field {info.receptive_field} px · {weights}")

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.refresh_pretrained()
        super().showEvent(event)

    # ------------------------------------------------------------------ actions

    def config(self) -> FinetuneConfig:
        """The run's settings as chosen in the widget (plus :attr:`config_overrides`)."""
        init, arch, arch_kwargs = self.chosen_init()
        values = dict(task=self.task_rows.task(), factor=self.task_rows.factor() if self.task_rows.task() == "superres" else 2,
                      arch=arch, arch_kwargs=arch_kwargs, init=init, steps=self.steps_spin.value(),
                      device=self.device_combo.currentText(), batch_size=self.batch_spin.value(),
                      patch_size=self.patch_spin.value(), lr=self.lr_spin.value(),
                      preview_every_s=self.preview_spin.value(), mask_replace=self.task_rows.mask_replace(),
                      denoise_loss=self.task_rows.denoise_loss(), mean_correction=self.task_rows.mean_correction(),
                      leak_correction=self.task_rows.leak_correction(), lattice_pairs=self.task_rows.lattice_pairs())
        values.update(self.config_overrides)
        return FinetuneConfig(**values)

    def start(self) -> bool:
        """Check the input here (main thread) and start training in a worker; False if refused."""
        run = self._prepared_run()
        if run is None:
            return False
        self._preview = None
        self.loss_plot.reset(run["config"].steps or run["config"].default_steps)
        self.controls.set_progress(0, 1, "starting…")
        self.controls.set_status(f"Preparing to train on {run['source']!r}…")
        self.controls.set_running(True)
        image, labels, target, config = run.pop("image"), run.pop("labels"), run.pop("target"), run["config"]
        source, out_dir, z = run["source"], run["out_dir"], run["preview_z"]
        self._run = run

        def make_run(token):
            return api.iter_finetune(image, labels, config, target=target, cancel=token, out_dir=out_dir, source=source,
                                     preview_z=z)

        self.bridge.start(make_run)
        return True

    def _prepare(self) -> dict:
        image_layer, labels_layer = self.image_combo.layer(), self.labels_combo.layer()
        if image_layer is None:
            raise InputError("Open an EM image first (File > Open, or File > Open Sample > EM SSL).")
        config = self.config()
        image = check_image(snapshot_image(image_layer), name=f"image {image_layer.name!r}")
        labels = target = None
        if config.task == "segment":
            if labels_layer is None:
                raise InputError("Add a Labels layer (the + button) and paint 1 = background and 2 = the structure to segment.")
            labels = snapshot_labels(labels_layer)
            check_trainable(check_labels(labels, image.shape))
        else:
            from ..restoration import check_lattice_pairs, check_restorable, check_target

            target_layer, factor = self.task_rows.target_layer(), self.task_rows.factor()
            if target_layer is image_layer:
                raise InputError("The target must be another image layer than the image (a clean or high-resolution version).")
            if target_layer is not None:
                target = check_target(snapshot_image(target_layer), image.shape, factor)
            check_restorable(image, config.task, factor, target is not None)
            if config.lattice_pairs:
                check_lattice_pairs(image, target is not None)
        return {"image": image, "labels": labels, "target": target, "config": config, "source": image_layer.name,
                "shape": image.shape, "task": config.task, "factor": self.task_rows.factor(),
                "spatial": spatial_kwargs(image_layer), "preview_z": current_slice(self.viewer, image_layer),
                "out_dir": self.out_folder.path() or None, "total": config.steps}

    def save_model(self, directory: str | None = None) -> Path | None:
        """Write the trained model into ``directory`` (asked for with a dialog when None)."""
        if self.trained_model is None:
            return None
        if directory is None:
            directory = QFileDialog.getExistingDirectory(self, "Choose or create an empty folder for the model")
        if not directory:
            return None
        try:
            path = self.trained_model.save(directory)
        except OSError as exc:
            show_error(f"Could not save the model in {directory!r}: {exc.strerror or exc}")
            return None
        show_info(f"Model saved in {path}")
        return path

    def add_labels_layer(self) -> Labels | None:
        """Add an empty Labels layer with the image's shape and placement, ready to paint class 2."""
        image = self.image_combo.layer()
        if image is None:
            show_error("Open an EM image first: the new Labels layer gets its size.")
            return None
        shape = (image.data[0] if image.multiscale else image.data).shape
        shape = shape[:-1] if image.rgb else shape
        layer = self.viewer.add_labels(np.zeros(shape, np.uint8), name=result_name(image.name, "labels"),
                                       colormap=class_colormap(), **spatial_kwargs(image))
        layer.brush_size = 12
        layer.selected_label = 2
        layer.mode = "paint"
        self.labels_combo.set_layer(layer)
        return layer

    def _match_labels(self, image) -> None:
        """Pick the labels layer that fits the chosen image (same shape, not one of our results)."""
        current = self.labels_combo.layer()
        if image is None or (current is not None and current.data.shape == image.data.shape):
            return
        fits = [la for la in self.viewer.layers if isinstance(la, Labels) and la.data.shape == image.data.shape]
        ours = (result_name(image.name, "preview"), result_name(image.name, "segmentation"))
        fits.sort(key=lambda la: (la.name in ours, not la.name.startswith(image.name)))
        if fits:
            self.labels_combo.set_layer(fits[0])

    # ------------------------------------------------------------------ events (main thread)

    def _on_started(self, event: RunStarted) -> None:
        info = event.info
        self._run.update(total=event.total_steps, started=time.monotonic())
        self.loss_plot.reset(event.total_steps)
        self.controls.set_progress(0, event.total_steps, f"0 / {event.total_steps} steps")
        if "task" in info:  # restoration
            text = f"Training {info.get('arch')} for {info['task']} on {event.device}: {info.get('mode')}."
        else:
            painted = sum(info.get("painted_pixels", {}).values())
            slices = len(info.get("painted_slices", []))
            text = (f"Training {info.get('arch')} on {event.device}: classes {info.get('classes')}, {painted} painted pixels "
                    f"on {slices} slice{'s' if slices != 1 else ''}.")
        if info.get("init_note"):
            text += f" Note: {info['init_note']}; starting from random weights."
        elif info.get("total_tensors"):
            text += f" Starting from {info.get('init')}: {info.get('matched_tensors')} of {info['total_tensors']} tensors matched."
        self.controls.set_status(text)

    def _on_step(self, event: StepEnd) -> None:
        self.loss_plot.add(event.step, event.losses.get("loss", float("nan")))
        self.controls.show_steps(event.step, event.total_steps, event.seconds)

    def _on_preview(self, event: Preview) -> None:
        run = self._run
        if run is None:
            return
        if event.z is None:
            data = event.data
        else:
            shape = (run["shape"][0],) + tuple(event.data.shape)
            if self._preview is None or self._preview.shape != shape:
                self._preview = np.zeros(shape, dtype=event.data.dtype)
            self._preview[event.z] = event.data
            data = self._preview
        if run["task"] != "segment":
            upsert_restored(self.viewer, result_name(run["source"], "preview"), data, run["spatial"], factor=run["factor"],
                            keep_selection=True)
            return
        upsert_labels(self.viewer, result_name(run["source"], "preview"), data, run["spatial"], keep_selection=True,
                      colormap=class_colormap(background=False), opacity=0.6)

    def _on_finished(self, event: RunFinished) -> None:
        self._end_run()
        result = event.result
        self._keep(result.model)
        metrics = result.model.meta.get("metrics", {})
        dice = metrics.get("train_painted_dice", {})
        fit = ", ".join(f"class {c} {v:.2f}" for c, v in dice.items() if c != "1")
        text = f"Done: {result.steps} steps in {format_seconds(result.seconds)}."
        if fit:
            text += f" Fit of the painted strokes (Dice): {fit}."
        if "psnr" in metrics:
            base = "bicubic" if "bicubic_psnr" in metrics else "input"
            text += (f" Against the target: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} "
                     f"({base}: {metrics[base + '_psnr']:.2f} dB, {metrics[base + '_ssim']:.3f}).")
        if result.model_dir:
            text += f" Saved in {result.model_dir}."
        self.controls.set_status(text + " Apply it with EM SSL › Apply (model just trained).")

    def _on_cancelled(self, event: RunCancelled) -> None:
        self._end_run()
        total = (self._run or {}).get("total", "?")
        text = f"Stopped at step {event.step} of {total}."
        if event.result is not None:
            self._keep(event.result.model)
            text += " The model trained so far is kept"
            text += f" and saved in {event.result.model_dir}." if event.result.model_dir else "."
        self.controls.set_status(text)

    def _keep(self, model: TrainedModel) -> None:
        self.trained_model = model
        self.trained_source = (self._run or {}).get("source")
        self.save_button.setEnabled(True)
        self.export_button.setEnabled(True)
        self.model_trained.emit(model)
        self._refresh_docked("refresh_model_info")
