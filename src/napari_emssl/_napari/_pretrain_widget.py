"""The "Pretrain" dock widget: self-supervised pretraining on the opened images (or a folder),
with a live loss plot and a live reconstruction preview.

The widget only builds a :class:`~napari_emssl.config.PretrainConfig`, snapshots the ticked
image layers and runs :func:`napari_emssl.api.iter_pretrain` through :class:`._worker.RunBridge`;
its event handlers update the progress bar, the loss plot and the preview layer. The output
folder of the last run (finished or stopped: the checkpoint is always kept) stays on the
widget as :attr:`PretrainWidget.result_dir`, where the Fine-tune widget finds it
("Start from: pretrained: <folder>"); Resume continues it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from napari.layers import Image, Layer
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from .. import api
from ..config import PretrainConfig
from ..engine.checkpoint import CHECKPOINT_META
from ..engine.events import Checkpointed, Preview, RunCancelled, RunFinished, RunStarted, StepEnd
from ..errors import InputError
from ..pretext import PRETEXT_METHODS, default_arch, supported_archs
from ._controls import (
    CheckableLayerList,
    FolderEdit,
    RunControls,
    advanced_section,
    device_combo,
    format_seconds,
    preview_spin_box,
    spin_box,
)
from ._layers import image_source, plane_spatial, upsert_image
from ._loss_plot import LossPlot
from ._worker import EndsTrainingRun, Failure, RunBridge, StopsRunOnClose, show_warning

METHOD_HELP = {
    "gan": "pix2pix: restore noisy, blurred images (CNNs; Kazimi et al. 2024)",
    "mae": "masked autoencoder: fill in hidden patches (He et al. 2022)",
    "mocov3": "momentum contrast v3: tell crops of one image from others (Chen et al. 2021); no preview",
    "mff": "MAE with multi-level feature fusion (ViTs; Liu et al. 2023)",
}
#: where runs go when no output folder is given: <root>/<method>-<date>-<time>
DEFAULT_ROOT = Path("~") / ".napari-emssl" / "pretrain"


def default_out_dir(method: str) -> Path:
    """A new folder under ``~/.napari-emssl/pretrain`` named after the method and the time."""
    root = DEFAULT_ROOT.expanduser()
    stem = f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = root / stem, 1
    while path.exists():
        n += 1
        path = root / f"{stem}-{n}"
    return path


def preview_name(method: str) -> str:
    return f"{method} preview"


def _is_ours(layer: Layer) -> bool:
    """A result layer of this plugin (a preview, class probabilities): not ticked by default."""
    return layer.name in {preview_name(m) for m in PRETEXT_METHODS} or " p(class " in layer.name


class PretrainWidget(EndsTrainingRun, StopsRunOnClose, QWidget):
    """Pretrain a network self-supervised (gan, mae, mocov3, mff) on unlabeled EM images."""

    run_noun = "pretraining"
    kept_on_stop = "the checkpoint is kept"

    pretrained = Signal(str)  # the output folder, once a run has finished or was stopped

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        #: output folder of the last run (model.json + model.safetensors + checkpoint), finished or stopped
        self.result_dir: str | None = None
        #: the PretrainResult of the last run
        self.last_result: Any = None
        #: extra PretrainConfig fields for scripts and tests, e.g. {"arch_kwargs": {"base_channels": 4}}
        self.config_overrides: dict = {}
        self._run: dict | None = None  # plain data about the current run
        self._build()
        self.bridge = RunBridge(
            {RunStarted: self._on_started, StepEnd: self._on_step, Preview: self._on_preview,
             Checkpointed: self._on_checkpointed, RunFinished: self._on_finished, RunCancelled: self._on_cancelled,
             Failure: self._on_failure},
            on_done=self._on_done, parent=self,
        )
        self.loss_plot.follow_theme(self.viewer)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.layers = CheckableLayerList(self.viewer, Image, self, default_checked=lambda la: not (la.rgb or _is_ours(la)))
        self.layers.setToolTip("The image layers to pretrain on (untick those to leave out)")
        self.folder = FolderEdit("optional: a folder (or file) of TIFF/PNG/JPEG images", "Images to pretrain on", self)
        self.folder.setToolTip("Images read from disk in addition to the ticked layers (large stacks are read lazily)")

        self.method_combo = QComboBox(self)
        for method in PRETEXT_METHODS:
            self.method_combo.addItem(method)
            self.method_combo.setItemData(self.method_combo.count() - 1, METHOD_HELP.get(method, ""), 3)  # ToolTipRole
        self.method_info = QLabel(self)
        self.method_info.setWordWrap(True)
        self.arch_combo = QComboBox(self)
        self.method_combo.currentTextChanged.connect(self._on_method)

        defaults = PretrainConfig(method=PRETEXT_METHODS[0])
        self.steps_spin = spin_box(QSpinBox(self), 1, 10_000_000, PretrainConfig.DEFAULT_STEPS)
        self.batch_spin = spin_box(QSpinBox(self), 1, 4096, defaults.batch_size)
        self.patch_spin = spin_box(QSpinBox(self), 16, 4096, defaults.patch, step=16)
        self.patch_spin.setToolTip("Side of the square crops, a multiple of 16 pixels")
        self.device_combo = device_combo(self)
        self.out_folder = FolderEdit(f"default: a new folder in {DEFAULT_ROOT}", "Save the pretrained model in", self)
        self.resume_check = QCheckBox("Resume (continue the last run's folder)", self)
        self.resume_check.setToolTip("Continue from the checkpoint in the folder above, or if it is empty, in the last "
                                     "run's folder; Steps is the total, counting the steps already done")
        self.preview_spin = preview_spin_box(self, defaults.preview_every_s)
        advanced = advanced_section(self, [("Preview every", self.preview_spin)])

        form = QFormLayout()
        form.addRow("Images", self.layers)
        form.addRow("Folder", self.folder)
        form.addRow("Method", self.method_combo)
        form.addRow("", self.method_info)
        form.addRow("Network", self.arch_combo)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Patch size", self.patch_spin)
        form.addRow("Device", self.device_combo)
        form.addRow("Save to", self.out_folder)
        form.addRow("", self.resume_check)

        self.controls = RunControls("Start pretraining", self)
        self.controls.start_button.clicked.connect(self.start)
        self.controls.stop_button.clicked.connect(self.stop)
        self.loss_plot = LossPlot(self)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(advanced)
        layout.addWidget(self.controls)
        layout.addWidget(self.loss_plot)
        self._on_method(self.method_combo.currentText())

    def _on_method(self, method: str) -> None:
        """Offer the architectures the method can pretrain, its default first chosen."""
        self.method_info.setText(METHOD_HELP.get(method, ""))
        self.arch_combo.blockSignals(True)
        self.arch_combo.clear()
        self.arch_combo.addItems(supported_archs(method))
        self.arch_combo.blockSignals(False)
        self.arch_combo.setCurrentText(default_arch(method))

    # ------------------------------------------------------------------ actions

    def config(self, **fixed: Any) -> PretrainConfig:
        """The run's settings as chosen in the widget (``fixed`` fields, then :attr:`config_overrides`, win)."""
        values: dict[str, Any] = dict(method=self.method_combo.currentText(), arch=self.arch_combo.currentText(),
                                      arch_kwargs={}, steps=self.steps_spin.value(), batch_size=self.batch_spin.value(),
                                      patch=self.patch_spin.value(), device=self.device_combo.currentText(),
                                      preview_every_s=self.preview_spin.value())
        values.update(fixed)
        values.update(self.config_overrides)
        return PretrainConfig(**values)

    def start(self) -> bool:
        """Check the input here (main thread) and start pretraining in a worker; False if refused."""
        run = self._prepared_run()
        if run is None:
            return False
        data, config, out_dir, resume = run.pop("data"), run["config"], run["out_dir"], run["resume"]
        self._run = run
        self.loss_plot.reset(config.total_steps())
        self.controls.set_progress(0, 1, "starting…")
        what = " and ".join(filter(None, [_count(len(run["names"]), "image layer"), run["folder"] and repr(run["folder"])]))
        verb = "Resuming" if resume else "Preparing"
        self.controls.set_status(f"{verb} {config.method} pretraining on {what} (reading the images…); saving in {out_dir}")
        self.controls.set_running(True)

        def make_run(token):
            return api.iter_pretrain(data, config, out_dir, cancel=token, resume=resume)

        self.bridge.start(make_run)
        return True

    def _prepare(self) -> dict:
        layers = self.layers.checked_layers()
        folder = self.folder.path()
        if not layers and not folder:
            raise InputError("Open an EM image (File > Open) and tick it, or choose a folder of images to pretrain on.")
        if folder and not Path(folder).expanduser().exists():
            raise InputError(f"The folder {folder!r} does not exist; choose a folder (or file) of TIFF, PNG or JPEG images.")
        data: list[Any] = [image_source(layer) for layer in layers]  # refuses colour layers
        if folder:
            data.append(str(Path(folder).expanduser()))
        resume = self.resume_check.isChecked()
        if resume:
            out_dir = self.out_folder.path() or self.result_dir
            if not out_dir:
                raise InputError("There is no run to resume yet: start one first, or choose the folder of an earlier run "
                                 "in 'Save to'.")
            config = self.config(**_checkpoint_settings(out_dir))
        else:
            config = self.config()
            out_dir = self.out_folder.path() or str(default_out_dir(config.method))
        return {"data": data, "config": config, "out_dir": str(Path(out_dir).expanduser()), "resume": resume,
                "names": [layer.name for layer in layers], "folder": folder,
                "spatial": plane_spatial(layers[0]) if layers else {}, "done_before": 0}

    # ------------------------------------------------------------------ events (main thread)

    def _on_started(self, event: RunStarted) -> None:
        run, info = self._run, event.info
        run.update(total=event.total_steps, done_before=int(info.get("resumed_from_step", 0)), method=info.get("method"))
        self.loss_plot.reset(event.total_steps)
        self.controls.show_steps(run["done_before"], event.total_steps, 0.0, run["done_before"])
        text = (f"Pretraining {info.get('method')} for {info.get('arch')} on {event.device}: "
                f"{_count(info.get('images', 0), 'image')} ({info.get('pixels', 0) / 1e6:.1f} megapixels), "
                f"{info.get('parameters', 0) / 1e6:.2f} M parameters.")
        if run["done_before"]:
            text += f" Resumed from step {run['done_before']}."
        run["status"] = text
        self.controls.set_status(text)
        for note in info.get("notes", []):
            show_warning(_with_layer_names(note, run["names"]))

    def _on_step(self, event: StepEnd) -> None:
        self.loss_plot.add(event.step, event.losses.get("loss", float("nan")))
        done_before = self._run["done_before"] if self._run else 0
        self.controls.show_steps(event.step, event.total_steps, event.seconds, done_before)

    def _on_preview(self, event: Preview) -> None:
        run = self._run
        if run is None or run.get("ended"):
            return
        name = preview_name(run.get("method") or run["config"].method)
        spatial = run["spatial"] if event.data.ndim == 2 else {}
        upsert_image(self.viewer, name, event.data, spatial, keep_selection=True, colormap="gray")

    def _on_checkpointed(self, event: Checkpointed) -> None:
        run = self._run
        if run is not None and not run.get("ended"):
            self.controls.set_status(f"{run.get('status', '')} Checkpoint saved at step {event.step}.".strip())

    def _on_finished(self, event: RunFinished) -> None:
        self._end_run()
        result = event.result
        text = f"Done: {result.steps} steps in {format_seconds(result.seconds)}."
        if result.model_dir:
            text += (f" Pretrained weights saved in {result.model_dir}. Fine-tune from them: EM SSL › Fine-tune, "
                     "Start from \"pretrained: …\".")
        self.controls.set_status(text)
        self._keep(result)

    def _on_cancelled(self, event: RunCancelled) -> None:
        self._end_run()
        total = (self._run or {}).get("total", "?")
        text = f"Stopped at step {event.step} of {total}."
        if event.result is not None and _model_dir(event.result):
            text += (f" The checkpoint and the weights trained so far are kept in {_model_dir(event.result)}; "
                     "tick Resume and Start to continue.")
        self.controls.set_status(text)
        self._keep(event.result)

    def _keep(self, result: Any) -> None:
        folder = _model_dir(result)
        if folder is None:
            return
        self.last_result, self.result_dir = result, folder
        self.pretrained.emit(folder)
        self._refresh_docked("refresh_pretrained")


def _model_dir(result: Any) -> str | None:
    """The output folder of a run's result (a PretrainResult, or a folder)."""
    if isinstance(result, (str, Path)):
        return str(result)
    folder = getattr(result, "model_dir", None)
    return str(folder) if folder else None


def _checkpoint_settings(folder: str) -> dict[str, Any]:
    """Method and network of the checkpoint in ``folder``, so that resuming matches it.

    Unreadable or missing checkpoints are left to the core, which says what is wrong.
    """
    try:
        meta = json.loads((Path(folder).expanduser() / CHECKPOINT_META).read_text())
        return {"method": str(meta["method"]), "arch": str(meta["arch"]), "arch_kwargs": dict(meta.get("arch_kwargs") or {})}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}" if n else ""


def _with_layer_names(note: str, names: list[str]) -> str:
    """The core calls data arrays 'array <k>'; the k-th array is the k-th ticked layer."""
    return re.sub(r"'array (\d+)'", lambda m: f"layer {names[int(m[1])]!r}" if int(m[1]) < len(names) else m[0], note)
