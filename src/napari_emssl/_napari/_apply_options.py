"""How the Apply widget applies a model: the options rows (probabilities, z smoothing, pixel type, flips, leak)."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QWidget

from ._task_controls import LEAK_CHOICES

Z_AVERAGE = 0.25  # "smooth along z": neighbour weights 1:4:1 (docs/benchmarks.md, z-consistency)
TTA_CHOICES = (("auto: 8 views for single images, 2 for stacks", None), ("on: 8 views", True), ("off: one view", False))


class PredictOptions:
    """The widgets of the :class:`~napari_emssl.config.PredictConfig` fields a user may change when applying."""

    def __init__(self, parent: QWidget) -> None:
        self.probabilities = QCheckBox("also add class probabilities", parent)
        self.z_average = QCheckBox("smooth along z (segmentation of a volume)", parent)
        self.z_average.setToolTip("Average each slice's class probabilities with its two neighbours (weights 1:4:1); "
                                  "for slices of one volume in order, not for stacks of unrelated images")
        self.keep_dtype = QCheckBox("keep the image's pixel type (restoration)", parent)
        self.keep_dtype.setToolTip("Round and clip restored values to the source's integer range instead of float32")
        self.tta = QComboBox(parent)
        for text, value in TTA_CHOICES:
            self.tta.addItem(text, value)
        self.tta.setToolTip("Restoration: average the 8 flips/rotations of each slice. Cleaner (0.3-1.3 dB on the benchmark "
                            "images, most on smooth ones) at eight times the prediction time; automatic: the 8 views "
                            "for single images up to 4096 x 4096, each slice and its mirror for stacks and bigger "
                            "images (twice the time of one view)")
        self.leak = QComboBox(parent)
        self.leak.addItem("as trained", None)  # the share the model records (the Apply model line names it)
        for text, value in LEAK_CHOICES:
            self.leak.addItem(text, value)
        self.leak.setToolTip("Self-supervised denoising: the share of the weight the network gives each pixel's own value "
                             "(its own noise) taken out after prediction. 'as trained': the model's (the Apply model line "
                             "names it); auto: chosen per slice, from 0 to 0.75; 0: off, better on images with detail at "
                             "the pixel scale; 1: each pixel from its neighbours alone, best on smooth images")

    def add_to(self, form: QFormLayout) -> None:
        form.addRow("", self.probabilities)
        form.addRow("", self.z_average)
        form.addRow("", self.keep_dtype)
        form.addRow("Average flips", self.tta)
        form.addRow("Leak correction", self.leak)

    def show_files_mode(self, files: bool) -> None:
        """Word the probabilities option for results written to disk (``files``) or added as layers."""
        self.probabilities.setText("also write class probabilities (<name>_probabilities.tif)" if files
                                   else "also add class probabilities")

    def values(self) -> dict[str, Any]:
        """The chosen options as PredictConfig keyword arguments."""
        return dict(probabilities=self.probabilities.isChecked(), keep_dtype=self.keep_dtype.isChecked(),
                    tta=self.tta.currentData(), z_average=Z_AVERAGE if self.z_average.isChecked() else 0.0,
                    leak_correction=self.leak_correction())

    def leak_correction(self) -> float | str | None:
        """The leak-correction share chosen at Apply ("auto" or a number), None for the model's own."""
        return self.leak.currentData()
